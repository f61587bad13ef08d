"""Per-task loss curves during ``fit``, and what the mix actually was.

A FLAN mix is about tasks helping or hurting each other, so one blended number is not enough:
this callback logs ``val/<task>/loss`` and ``val/<task>/ppl`` at every validation (the sanity
check's pass is the step-0 "before training" point) and, at every optimizer step,
``train/<task>/loss`` and ``train/<task>/tokens``: each task's completion-token mean over the
step's examples of that task, summed over every micro-batch and DDP rank (a task with no example in
a step logs 0 tokens and no loss). Weighted by their tokens, the per-task losses combine exactly
into ``train/loss``. Each epoch's realised examples and completion tokens per task are kept here
(checkpointed with the callback's state) and handed to the adapter export as ``mix_per_epoch`` in
``training_history.json`` (:meth:`TaskCurves.record`).
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import Callback, Trainer

from lora_lightning.distributed import gather_objects

Sums = dict[str, list[float]]  # task -> [loss sum, completion tokens, examples]


def merge(into: Sums, parts: list[Sums]) -> Sums:
    for part in parts:
        for task, values in part.items():
            entry = into.setdefault(task, [0.0, 0, 0])
            for i, value in enumerate(values):
                entry[i] += value
    return into


class TaskCurves(Callback):
    """Logs each task's training and validation loss, and records each epoch's realised mix."""

    def __init__(self) -> None:
        self._window: Sums = {}
        self._epoch: Sums = {}
        self._val: Sums = {}
        self.mix_per_epoch: list[dict[str, Any]] = []

    def record(self) -> dict[str, Any]:
        """What this callback adds to the run's history: each finished epoch's realised mix."""
        return {"mix_per_epoch": list(self.mix_per_epoch)} if self.mix_per_epoch else {}

    def state_dict(self) -> dict[str, Any]:
        return {"mix_per_epoch": self.mix_per_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.mix_per_epoch = list(state_dict.get("mix_per_epoch", []))

    # -- training ------------------------------------------------------------------------------

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not isinstance(outputs, dict) or "task_losses" not in outputs:
            return
        merge(self._window, [outputs["task_losses"]])
        if not batch.get("step_end", True):
            return
        step = merge({}, gather_objects([self._window]))
        self._window = {}
        merge(self._epoch, [step])
        # Every task's token count every step (0 when absent); a loss only where the task had examples.
        # Lightning repeats a metric's last value on steps that do not log it, so read a task's loss
        # at the steps where its tokens are above 0.
        for task in sorted(set(step) | {t.name for t in getattr(trainer.datamodule, "task_specs", [])}):
            loss_sum, tokens, _ = step.get(task, (0.0, 0, 0))
            if tokens:
                pl_module.log(f"train/{task}/loss", loss_sum / tokens)
            pl_module.log(f"train/{task}/tokens", float(tokens))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        mix = {
            task: {"examples": int(n), "completion_tokens": int(tokens)}
            for task, (_, tokens, n) in sorted(self._epoch.items())
        }
        self.mix_per_epoch.append({"epoch": trainer.current_epoch, "tasks": mix})
        self._epoch = {}

    # -- validation ----------------------------------------------------------------------------

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if isinstance(outputs, dict) and "task_losses" in outputs:
            merge(self._val, [outputs["task_losses"]])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.state.fn != "fit":
            return
        totals = merge({}, gather_objects([self._val]))  # a distributed sampler's padding is a few repeats
        self._val = {}
        values = {}
        for task, (loss_sum, tokens, _) in sorted(totals.items()):
            loss = loss_sum / max(tokens, 1)
            values[f"val/{task}/loss"], values[f"val/{task}/ppl"] = loss, math.exp(min(loss, 50))
        if trainer.sanity_checking:  # Lightning drops logs made in the sanity check: the step-0 point goes direct
            for logger in pl_module.loggers:
                logger.log_metrics(values, step=trainer.global_step)
            return
        for name, value in values.items():
            pl_module.log(name, value, sync_dist=True)  # the same value on every rank: a no-op mean, no warning
