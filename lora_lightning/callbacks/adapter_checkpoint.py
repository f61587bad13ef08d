"""Exports the adapter alone, in peft's format, for the best validation loss and at the end.

``<dirpath>/adapter/`` (best) and ``<dirpath>/adapter_last/``, each written whole by
:func:`~lora_lightning.export.write_adapter_folder` from what this callback collects: the module's
model, tokenizer, prompt format and loss history, the other callbacks' records (the realised mix), the
datamodule's description and the trainer's settings. With ``model.lora=false`` the whole model is
exported instead, as a Transformers folder (``model/`` and ``model_last/``). A folder there that this
project did not write is refused when ``fit`` starts (:func:`~lora_lightning.atomic_write.check_writable_folder`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lora_lightning.atomic_write import check_writable_folder
from lora_lightning.callbacks.task_curves import TaskCurves
from lora_lightning.errors import UserInputError
from lora_lightning.export import training_settings, write_adapter_folder
from lora_lightning.hub import check_hub_access, push_folder
from lora_lightning.model.sharding import gathered_state_dict

OVERWRITE_FLAG = "--adapter_export.overwrite true"


class AdapterCheckpoint(Callback):
    """Writes only the adapter (peft format) plus tokenizer and loss history.

    Args:
        dirpath: Run folder the exports go under; the CLI links it to ``trainer.default_root_dir``.
        monitor: Logged metric that decides which export is the best.
        mode: ``min`` (losses) or ``max`` (accuracies), as ``ModelCheckpoint``'s ``mode``.
        save_last: Also export the final weights at the end of fit.
        push_to_hub: Upload the best adapter to the Hugging Face Hub at the end of fit. Checked when
            the run starts: offline or without a login, the run fails at once.
        hub_repo: Hub repository for ``push_to_hub``, e.g. ``user/smollm2-flan-lora``.
        overwrite: Replace export folders that this project did not write (a folder a user made at
            ``<dirpath>/adapter``). Without it such a folder stops ``fit`` at its start, with one line.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        monitor: str = "val/loss",
        save_last: bool = True,
        push_to_hub: bool = False,
        hub_repo: str | None = None,
        overwrite: bool = False,
        mode: str = "min",
    ):
        if mode not in ("min", "max"):
            raise UserInputError(f"adapter_export.mode must be min or max, got {mode!r}")
        if push_to_hub:
            check_hub_access(hub_repo)
        self.push_to_hub = push_to_hub
        self.hub_repo = hub_repo
        self.dirpath = dirpath
        self.monitor = monitor
        self.mode = mode
        self.save_last = save_last
        self.overwrite = overwrite
        self.best_score: float | None = None
        self.best_step: int | None = None
        self._started = time.monotonic()
        self.log_dir: str | None = None

    def root(self, trainer: Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Before the model is loaded: an export folder that is not this project's is refused now,
        not at the first export (every rank checks, read only, so all stop together)."""
        if stage == "fit":
            for which in ("best", "last") if self.save_last else ("best",):
                check_writable_folder(self.folder(trainer, pl_module, which), self.overwrite, OVERWRITE_FLAG)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.monotonic()
        # On every rank: trainer.log_dir is a collective (a broadcast) under DDP, and exports run on rank 0 only.
        self.log_dir = str(Path(trainer.log_dir).resolve()) if trainer.log_dir else None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if self.best_score is None or (score < self.best_score if self.mode == "min" else score > self.best_score):
            self.best_score, self.best_step = score, trainer.global_step
            self.export(trainer, pl_module, "best")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.save_last:
            self.export(trainer, pl_module, "last")
        if self.push_to_hub and trainer.is_global_zero:
            best = self.folder(trainer, pl_module, "best")
            folder = best if best.is_dir() else self.folder(trainer, pl_module, "last")
            rank_zero_info(f"Pushed {folder} to the Hub: {push_folder(folder, self.hub_repo)}")

    def folder(self, trainer: Trainer, pl_module: Any, which: str) -> Path:
        kind = "adapter" if getattr(pl_module, "is_lora", True) else "model"
        return self.root(trainer) / (kind if which == "best" else f"{kind}_last")

    def export(self, trainer: Trainer, pl_module: Any, which: str) -> Path | None:
        """Called on every rank: a sharded (FSDP2) model's weights are gathered first, collectively,
        and only what trains (the adapter); rank 0 writes."""
        weights = gathered_state_dict(pl_module.model, trainable_only=getattr(pl_module, "is_lora", True))
        return self.write(trainer, pl_module, which, weights) if trainer.is_global_zero else None

    def write(self, trainer: Trainer, pl_module: Any, which: str, weights: dict | None) -> Path:
        history = {
            "base_model": pl_module.base_model_path,
            "base_quantization": pl_module.hparams.get("quantization"),
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "best_val_loss": self.best_score,
            "best_step": self.best_step,
            "train_seconds": round(time.monotonic() - self._started, 1),
            "log_dir": self.log_dir,
            **(trainer.datamodule.describe() if hasattr(trainer.datamodule, "describe") else {}),
            **pl_module.history,
            **run_records(trainer),
        }
        run = {
            "optimizer": getattr(pl_module, "optimizer_class", None),
            "custom_scheduler": getattr(pl_module, "lr_scheduler_class", None) is not None,
            "devices": trainer.world_size,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "precision": trainer.precision,
            "gradient_clip_val": trainer.gradient_clip_val,
        }
        settings = training_settings(pl_module.hparams, getattr(trainer.datamodule, "hparams", {}), run)
        target = write_adapter_folder(
            self.folder(trainer, pl_module, which),
            pl_module.model,
            pl_module.tokenizer,
            pl_module.prompt_format,
            history,
            settings,
            self.overwrite,
            OVERWRITE_FLAG,
            weights,
        )
        rank_zero_info(f"Exported {which} {target.name} (step {trainer.global_step}) to {target}")
        return target

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_step = state_dict.get("best_step")


def run_records(trainer: Trainer) -> dict[str, Any]:
    """What the run's other callbacks record for its history (each one's ``record()``: the realised mix)."""
    out: dict[str, Any] = {}
    for callback in trainer.callbacks:
        if isinstance(callback, TaskCurves):
            out.update(callback.record())
    return out
