"""The training loss of an optimizer step, normalised one way however the step is split, and its checks.

The loss of a step is ``sum of completion-token losses over the whole step / completion tokens of
the whole step``: every micro-batch of the accumulation window and every DDP rank counts each
token once. The data loader tells each micro-batch its window's token count (``step_tokens``, this
rank's) and marks the window's last micro-batch (``step_end``); one small all-reduce per
micro-batch adds the ranks' counts (and whether any rank's loss is non-finite, so all ranks stop
together). Lightning divides the returned loss by ``accumulate_grad_batches`` and DDP averages
gradients over ranks; the scale ``accumulate x world / step tokens`` undoes both, so batch 8 x 1,
4 x 2, 2 x 4 and 2 ranks x 4 x 1 give the same gradients. ``train/loss`` is the step's true
per-token mean, which the module also records in its history.

A step counts only the micro-batches that train in it: the loader ends a window where Lightning
steps (the epoch's last, short window; one ``limit_train_batches`` cuts; after a resume in the
middle of a window, the batches after the resume point). Nothing carries over from one epoch to
the next. The counts are float64: ``bf16-true`` makes bfloat16 the default dtype inside a
training step, which would round a count of 1,860 tokens to 1,856.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from lora_lightning.data.tokenization import Batch
from lora_lightning.errors import TrainingHalted
from lora_lightning.model.sharding import gradient_norm

MAX_OVERFLOW_STEPS = 20  # 16-mixed: consecutive GradScaler overflow skips before the run is called broken


class StepLoss:
    """Per-step loss scaling, logging and non-finite handling for a LoRAModule."""

    def __init__(self, module: Any):
        self.module = module
        self.skipped_updates = 0
        self.overflow_streak = 0
        self._window_sum = 0.0
        self._val = [0.0, 0]

    # -- training ------------------------------------------------------------------------------

    def start_epoch(self) -> None:
        """A new epoch's first window starts from nothing (no loss of an earlier one in its mean)."""
        self._window_sum = 0.0

    def scaled(
        self, loss_sum: torch.Tensor, count: int, batch: dict[str, Any], batch_idx: int
    ) -> tuple[torch.Tensor, float | None]:
        """The value to backpropagate for this micro-batch (see the module docstring), and the step's
        per-token mean loss on the step's last micro-batch (None before it)."""
        m = self.module
        trainer = m.trainer
        accumulate, world = trainer.accumulate_grad_batches, trainer.world_size
        local_tokens = batch.get("step_tokens", count * accumulate)  # a plain loader: each micro-batch its own mean
        flags = [float(local_tokens), float(not torch.isfinite(loss_sum))]
        totals = torch.tensor(flags, device=loss_sum.device, dtype=torch.float64)
        if world > 1:
            totals = trainer.strategy.reduce(totals, reduce_op="sum")
        step_tokens = float(totals[0].clamp(min=1))
        if totals[1] > 0 and m.hparams.nonfinite == "stop":
            raise TrainingHalted(
                f"non-finite loss at step {m.global_step} (epoch {m.current_epoch}, batch "
                f"{batch_idx}); the last good checkpoint is kept. Lower model.learning_rate, "
                "or set model.nonfinite=skip"
            )
        self._window_sum += float(loss_sum.detach())
        mean = None
        if batch.get("step_end", True):
            window = torch.tensor([self._window_sum], device=loss_sum.device, dtype=torch.float64)
            if world > 1:
                window = trainer.strategy.reduce(window, reduce_op="sum")
            mean = float(window[0]) / step_tokens
            self._window_sum = 0.0
            m.log("train/loss", mean, prog_bar=True, batch_size=batch["input_ids"].shape[0])
            m.log("train/ppl", math.exp(min(mean, 50)), batch_size=batch["input_ids"].shape[0])
            m.log("train/step_tokens", step_tokens)
        return loss_sum * (accumulate * world / step_tokens), mean

    def check_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Logs the gradient norm; a non-finite one stops the run or skips the update (``nonfinite``).

        Under 16-mixed the GradScaler's overflow steps are normal (it skips them and lowers its
        scale); only ``MAX_OVERFLOW_STEPS`` of them in a row mean the run is broken.
        """
        m = self.module
        grads = [p.grad.detach() for p in m.model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = gradient_norm(grads)
        if torch.isfinite(norm):
            self.overflow_streak = 0
            m.log("train/grad_norm", norm)
            return
        if getattr(m.trainer.precision_plugin, "scaler", None) is not None:
            self.overflow_streak += 1
            if self.overflow_streak < MAX_OVERFLOW_STEPS:
                return  # the scaler skips this step itself
            raise TrainingHalted(
                f"{self.overflow_streak} gradient overflows in a row at step {m.global_step} under "
                "16-mixed; lower model.learning_rate or use bf16-mixed / 32-true"
            )
        if m.hparams.nonfinite == "stop":
            raise TrainingHalted(
                f"non-finite gradient norm at step {m.global_step} (epoch {m.current_epoch}); "
                "the last good checkpoint is kept. Lower model.learning_rate, or set "
                "model.nonfinite=skip"
            )
        optimizer.zero_grad(set_to_none=True)  # parameters without a gradient are left alone: no update
        self.skipped_updates += 1
        rank_zero_info(
            f"Skipped the update of step {m.global_step}: non-finite gradient ({self.skipped_updates} skipped so far)"
        )
        m.log("train/skipped_updates", float(self.skipped_updates))

    # -- validation ----------------------------------------------------------------------------

    def add_validation(self, loss_sum: torch.Tensor, count: int) -> None:
        self._val[0] += float(loss_sum)
        self._val[1] += count

    def log_validation(self) -> float:
        """The selection set's per-token loss (summed over ranks), logged as ``val/loss`` and returned;
        the sanity check's value is the "before training" point of the curve."""
        m = self.module
        totals = torch.tensor([self._val[0], float(self._val[1])], device=m.device, dtype=torch.float64)
        self._val = [0.0, 0]
        if m.trainer.world_size > 1:
            totals = m.trainer.strategy.reduce(totals, reduce_op="sum")
        value = float(totals[0] / totals[1].clamp(min=1))
        if m.trainer.sanity_checking:
            # Lightning discards logs made during the sanity check, so this one goes to the loggers directly.
            rank_zero_info(f"Validation loss before training (step {m.global_step}): {value:.4f}")
            for logger in m.loggers:
                logger.log_metrics({"val/loss": value, "val/ppl": math.exp(min(value, 50))}, step=m.global_step)
            return value
        # Summed over the ranks above, so the same on each: sync_dist's mean leaves it as it is.
        m.log("val/loss", value, prog_bar=True, sync_dist=True)
        m.log("val/ppl", math.exp(min(value, 50)), sync_dist=True)
        return value


def per_task(batch: Batch, sums: torch.Tensor, counts: torch.Tensor) -> dict[str, list[float]]:
    """``{task: [loss sum, completion tokens, examples]}`` of a batch, for the per-task curves
    (:class:`~lora_lightning.callbacks.TaskCurves`); empty when the batch does not name its tasks."""
    out: dict[str, list[float]] = {}
    for task, loss_sum, count in zip(batch.get("task") or [], sums.detach().tolist(), counts.tolist()):
        entry = out.setdefault(task, [0.0, 0, 0])
        entry[0] += loss_sum
        entry[1] += count
        entry[2] += 1
    return out
