"""The LightningModule: a causal LM wrapped with peft LoRA (or fully fine-tuned), and its training.

The Trainer does device placement, mixed precision, gradient accumulation and clipping; this
module owns the model, the loss, the optimizer and what gets logged. Checkpoints hold only the
trainable weights (the adapter), never the frozen base.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric

from lora_lightning.errors import TrainingHalted, UserInputError
from lora_lightning.model.loading import (DEFAULT_BASE_CACHE, EMBEDDED_MODEL, load_causal_lm, load_tokenizer,
                                          resolve_model_path)
from lora_lightning.model.inference import adapter_base, attach_adapter, generate, trained_prompt_format
from lora_lightning.model.lora import apply_lora, check_lora_settings
from lora_lightning.model.loss import completion_loss, unwrap_causal_lm
from lora_lightning.model.optim import decay_groups, warmup_then_decay


class CheckpointMismatchError(UserInputError):
    """A checkpoint whose weights do not fit this module's trainable parameters."""


class LoRAModule(LightningModule):
    """LoRA (or full) fine-tuning of a causal language model on prompt/completion batches.

    Args:
        model_name: Base model: a Hub id (``openai-community/gpt2-medium``), a local Transformers
            folder, a ``.gguf`` file, or ``smollm2-135m-instruct`` (embedded, offline). null with
            ``adapter`` set: the base that adapter names.
        adapter: A trained adapter folder to start from (for ``predict``, ``validate`` or more
            training) instead of a fresh LoRA; its LoRA settings replace the ``lora_*`` keys.
        lora: Train a LoRA adapter (True) or fine-tune every weight (False, the guide's non-LoRA mode).
        lora_r: LoRA rank (the guide's ``--lora_r``).
        lora_alpha: LoRA scaling numerator; the update is scaled by alpha / r (or alpha / sqrt(r) with rsLoRA).
        lora_dropout: Dropout on the LoRA input, in [0, 1).
        lora_bias: Which biases train: ``none``, ``all`` or ``lora_only``.
        target_modules: ``auto`` (per architecture: gpt2 c_attn,c_proj; gpt_neox query_key_value;
            llama q_proj,v_proj), ``all-linear``, or a list of module names.
        use_rslora: Rank-stabilised LoRA scaling (alpha / sqrt(r)).
        use_dora: Weight-decomposed LoRA (DoRA).
        learning_rate: Peak AdamW learning rate, reached after warmup.
        weight_decay: AdamW weight decay for matrices (biases and norms get none).
        warmup_ratio: Share of the optimizer steps spent warming the learning rate up from 0.
        lr_schedule: Decay after warmup: ``linear`` or ``cosine``, down to 0 at the last step.
        gradient_checkpointing: Recompute activations in backward (non-reentrant) to save memory.
        compile: ``torch.compile`` the transformer body (slower first steps, then faster kernels).
        completion_only_head: Apply the LM head only at completion positions (same loss, much less work).
        trust_remote_code: Allow model code from the model's repository to run. Off unless you trust it.
        base_cache_dir: Where GGUF models are cached as safetensors after their first conversion.
        nonfinite: What a non-finite loss or gradient does: ``stop`` the run with a message naming
            the step (the last good checkpoint stays as it was), or ``skip`` that batch's update.
        max_new_tokens: ``predict``: most tokens generated per prompt.
        temperature: ``predict``: 0 for greedy decoding, above 0 to sample.
        top_p: ``predict``: nucleus sampling mass when sampling.
    """

    def __init__(
        self,
        model_name: str | None = EMBEDDED_MODEL,
        adapter: str | None = None,
        lora: bool = True,
        lora_r: int = 16,
        lora_alpha: float = 32.0,
        lora_dropout: float = 0.1,
        lora_bias: Literal["none", "all", "lora_only"] = "none",
        target_modules: list[str] | str = "auto",
        use_rslora: bool = False,
        use_dora: bool = False,
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.06,
        lr_schedule: Literal["linear", "cosine"] = "linear",
        gradient_checkpointing: bool = False,
        compile: bool = False,
        completion_only_head: bool = True,
        trust_remote_code: bool = False,
        base_cache_dir: str = DEFAULT_BASE_CACHE,
        nonfinite: Literal["stop", "skip"] = "stop",
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ):
        super().__init__()
        if adapter is not None and not Path(adapter, "adapter_config.json").is_file():
            raise UserInputError(f"model.adapter {adapter!r} is not an adapter folder (no adapter_config.json)")
        if lora:
            check_lora_settings(lora_r, lora_alpha, lora_dropout, lora_bias)
        if learning_rate <= 0:
            raise UserInputError(f"learning_rate must be positive, got {learning_rate!r}")
        if not 0.0 <= warmup_ratio < 1.0:
            raise UserInputError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
        self.save_hyperparameters()
        self.model: Any = None
        self.tokenizer: Any = None
        self.base_model_path: str | None = None
        # Checkpoints carry only trainable weights; loading checks them in on_load_checkpoint.
        self.strict_loading = False
        self.val_loss = MeanMetric()
        self.skipped_updates = 0
        self.loss_history: dict[str, list] = {"train_loss": [], "val_loss": []}

    # -- model -------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Loads the base and adds LoRA; called by the Trainer (once) before fit/validate/test."""
        if self.model is not None:
            return
        hp = self.hparams
        name = hp.model_name or (adapter_base(hp.adapter) if hp.adapter else EMBEDDED_MODEL)
        self.base_model_path = resolve_model_path(name, hp.base_cache_dir)
        self.tokenizer = load_tokenizer(self.base_model_path, hp.trust_remote_code)
        model = load_causal_lm(self.base_model_path, hp.trust_remote_code)
        model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        if hp.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hp.adapter is not None:
            model = attach_adapter(model, hp.adapter, trainable=True)
        elif hp.lora:
            model = apply_lora(model, hp.lora_r, hp.lora_alpha, hp.lora_dropout, hp.lora_bias,
                               hp.target_modules, hp.use_rslora, hp.use_dora)
        if hp.compile:
            unwrap_causal_lm(model).base_model.compile()  # in place: the peft wrapper and state dict keep their names
        self.model = model.train()  # from_pretrained returns eval mode; the Trainer switches modes per loop
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        rank_zero_info(f"Model {name}: {trainable:,} trainable of {total:,} parameters "
                       f"({100 * trainable / total:.2f}%)")

    @property
    def is_lora(self) -> bool:
        return bool(self.hparams.lora or self.hparams.adapter)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    # -- steps -------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        loss_sum, count = completion_loss(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                          completion_only_head=self.hparams.completion_only_head)
        return loss_sum / max(count, 1), count

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, count = self._loss(batch)
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/ppl", torch.exp(loss.detach().clamp(max=50)), batch_size=bs)
        self.log("train/completion_tokens", float(count), reduce_fx="sum", batch_size=bs)
        finite = bool(torch.isfinite(loss))
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            # DDP averages gradients over ranks; weighting each rank's mean by its share of the
            # global completion tokens makes that average the global per-token mean, the same
            # loss a single device computes on the whole global batch. The same reduction tells
            # every rank whether any rank's loss is non-finite, so all stop together.
            totals = self.trainer.strategy.reduce(torch.tensor([float(count), float(not finite)], device=loss.device),
                                                  reduce_op="sum")
            loss = loss * (world * count / totals[0].clamp(min=1))
            finite = bool(totals[1] == 0)
        if not finite and self.hparams.nonfinite == "stop":
            raise TrainingHalted(f"non-finite loss at step {self.global_step} (epoch {self.current_epoch}, batch "
                                 f"{batch_idx}); the last good checkpoint is kept. Lower model.learning_rate, "
                                 "or set model.nonfinite=skip")
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.loss_history["train_loss"].append([self.global_step, float(loss.detach())])

    def validation_step(self, batch: dict[str, torch.Tensor] | list[dict], batch_idx: int) -> None:
        if isinstance(batch, list):  # standalone `validate`: evaluation examples, scored like `test`
            return self.test_step(batch, batch_idx)
        loss, count = self._loss(batch)
        self.val_loss.update(loss.detach(), weight=count)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.state.fn == "validate":
            return self.on_test_epoch_end()
        value = float(self.val_loss.compute())
        self.val_loss.reset()
        self.loss_history["val_loss"].append([self.global_step, value])
        if self.trainer.sanity_checking:
            # Lightning discards logs made during the sanity check; this one is the "before
            # training" point of the validation curve, so it goes to the logger directly.
            rank_zero_info(f"Validation loss before training (step {self.global_step}): {value:.4f}")
            for logger in self.loggers:
                logger.log_metrics({"val/loss": value, "val/ppl": math.exp(min(value, 50))}, step=self.global_step)
            return
        # MeanMetric.compute() already reduced across ranks: every rank holds the same value.
        self.log("val/loss", value, prog_bar=True, sync_dist=True)
        self.log("val/ppl", math.exp(min(value, 50)), sync_dist=True)

    # -- evaluation (test, standalone validate) -----------------------------------------------

    def eval_modes(self) -> list[str]:
        """``base`` and ``adapter`` when a trained adapter is loaded (so the table shows what it
        bought), else ``model`` alone."""
        return ["base", "adapter"] if self.hparams.adapter else ["model"]

    def on_test_epoch_start(self) -> None:
        self.eval_records = {mode: [] for mode in self.eval_modes()}

    def on_validation_epoch_start(self) -> None:
        if self.trainer.state.fn == "validate":
            self.on_test_epoch_start()

    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        from lora_lightning.evaluation.scoring import score_examples

        if not hasattr(self, "eval_records"):
            self.on_test_epoch_start()
        dm = self.trainer.datamodule
        task = dm.task_by_name(batch[0]["task"])
        prompt_format = trained_prompt_format(self.hparams.adapter) if self.hparams.adapter else dm.hparams.prompt_format
        for mode in self.eval_modes():
            with (self.model.disable_adapter() if mode == "base" else contextlib.nullcontext()):
                self.eval_records[mode] += score_examples(self.model, self.tokenizer, batch, task.eval.max_new_tokens,
                                                          dm.hparams.max_length, prompt_format)

    def on_test_epoch_end(self) -> None:
        from lora_lightning.evaluation.report import as_csv, as_markdown, results_rows, task_metrics

        records = {mode: gather_objects(rows) for mode, rows in self.eval_records.items()}
        del self.eval_records
        dm = self.trainer.datamodule
        results = {mode: {t.name: task_metrics(t, [r for r in rows if r["task"] == t.name]) for t in dm.task_specs}
                   for mode, rows in records.items()}
        stage = "test" if self.trainer.state.fn == "test" else "validate"
        for mode, per_task in results.items():
            prefix = stage if mode != "base" else f"{stage}_base"
            for task, values in per_task.items():
                for metric, value in values.items():
                    self.log(f"{prefix}/{task}/{metric}", value, rank_zero_only=True)
        if not self.trainer.is_global_zero:
            return
        rows = results_rows(results)
        shots = dm.hparams.eval_shots
        where = Path(self.hparams.adapter).parent if self.hparams.adapter else Path(self.trainer.default_root_dir)
        name = f"eval_results{'' if not shots else f'_{shots}shot'}"
        title = (f"Held-out {dm.hparams.eval_split} examples ({shots}-shot), base model vs adapter"
                 if self.hparams.adapter else f"Held-out {dm.hparams.eval_split} examples ({shots}-shot)")
        where.mkdir(parents=True, exist_ok=True)
        (where / f"{name}.md").write_text(as_markdown(rows, f"## {title}"))
        (where / f"{name}.csv").write_text(as_csv(rows))
        self.eval_results = results
        rank_zero_info(f"{title}:\n{as_markdown(rows)}Written to {where / name}.md and .csv")

    def predict_step(self, batch: dict[str, list], batch_idx: int) -> list[dict]:
        """Completions for a batch of prompt rows; each row comes back with ``completion`` added."""
        hp = self.hparams
        prompt_format = trained_prompt_format(hp.adapter) if hp.adapter else "plain"
        texts = generate(self.model, self.tokenizer, batch["prompt"], hp.max_new_tokens, hp.temperature, hp.top_p,
                         batch_size=len(batch["prompt"]), prompt_format=prompt_format)
        return [{**row, "completion": text} for row, text in zip(batch["rows"], texts)]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad.detach() for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        if not torch.isfinite(norm):
            if self.hparams.nonfinite == "stop":
                raise TrainingHalted(f"non-finite gradient norm at step {self.global_step} (epoch {self.current_epoch}); "
                                     "the last good checkpoint is kept. Lower model.learning_rate, or set "
                                     "model.nonfinite=skip")
            # Parameters without a gradient are left alone by AdamW: this update is skipped entirely.
            optimizer.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            rank_zero_info(f"Skipped the update of step {self.global_step}: non-finite gradient "
                           f"({self.skipped_updates} skipped so far)")
            self.log("train/skipped_updates", float(self.skipped_updates))
            return
        self.log("train/grad_norm", norm)

    # -- optimizer ---------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(decay_groups(self.model.named_parameters(), hp.weight_decay), lr=hp.learning_rate)
        scheduler = warmup_then_decay(optimizer, hp.lr_schedule, int(self.trainer.estimated_stepping_batches),
                                      hp.warmup_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints: trainable weights only -------------------------------------------------

    def trainable_names(self) -> set[str]:
        return {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["loss_history"] = self.loss_history
        checkpoint["base_model_path"] = self.base_model_path

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        missing = sorted(self.trainable_names() - set(state))
        if missing:
            raise CheckpointMismatchError(
                f"checkpoint lacks {len(missing)} trainable weights of this model (first: {missing[0]}); "
                "it was written for another base model or LoRA setting")
        own = dict(self.named_parameters())
        wrong = [k for k in sorted(state) if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
        if wrong:
            raise CheckpointMismatchError(
                f"checkpoint weight {wrong[0]} has shape {tuple(state[wrong[0]].shape)} but this model's is "
                f"{tuple(own[wrong[0]].shape)}; it was written with another lora_r or base model")
        self.loss_history = checkpoint.get("loss_history", self.loss_history)


def gather_objects(rows: list) -> list:
    """All ranks' Python objects on every rank (identity when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    return [row for part in parts for row in part]
