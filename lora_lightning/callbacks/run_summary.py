"""Runs you can compare side by side in TensorBoard's HPARAMS tab (and with ``lora-lightning compare``).

At the start of ``fit`` the run's key settings (model, LoRA rank/alpha/dropout/targets, tasks and
mixing, batch and accumulation, learning rate, precision, prompt format) and the realised mix (each
task's training examples and completion tokens) are written as the run's hyperparameters, with
these metrics: ``hp/best_val_loss`` and ``hp/best_step`` (filled in at each improvement), and
``hp/test/<task>/<metric>`` for every metric the results table will hold, filled in by the
``test`` that scores the run's adapter (``make train`` runs it after ``fit``): that process
writes them into this run's log folder, named in the adapter's ``training_history.json``.

An experiment tracker among the loggers (MLflow, W&B: ``configs/mlflow.yaml``, ``configs/wandb.yaml``)
gets the same settings as params named ``run/<setting>`` (beside the module's and data's own
hyperparameters, which Lightning logs to every logger under their plain names: MLflow refuses a second
value for a param, and ``tasks`` or ``prompt_format`` read differently there), plus ``run/dir``, the run folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

from lora_lightning.metrics import task_columns


def run_settings(trainer: Trainer, pl_module: Any) -> dict[str, Any]:
    """The settings that tell two runs apart, flat, as TensorBoard hyperparameters."""
    hp, dm = pl_module.hparams, trainer.datamodule
    targets = hp.target_modules if isinstance(hp.target_modules, str) else ",".join(hp.target_modules)
    settings = {
        "model": str(hp.model_name or hp.adapter),
        "lora": bool(pl_module.is_lora),
        "lora_r": hp.lora_r,
        "lora_alpha": hp.lora_alpha,
        "lora_dropout": hp.lora_dropout,
        "target_modules": targets,
        "learning_rate": hp.learning_rate,
        "precision": str(trainer.precision),
        "prompt_format": pl_module.prompt_format,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "devices": trainer.world_size,
    }
    if dm is not None and hasattr(dm, "stats"):
        settings.update(
            {
                "tasks": ",".join(t.name for t in dm.task_specs),
                "mixing": dm.hparams.mixing,
                "batch_size": dm.hparams.batch_size,
                "max_length": dm.hparams.max_length,
            }
        )
        for task, s in dm.stats.items():
            settings[f"mix/{task}/examples"] = s["train"]
            settings[f"mix/{task}/completion_tokens"] = s.get("train_completion_tokens", -1)
    return settings


def test_metric_names(trainer: Trainer) -> list[str]:
    """``hp/test/<task>/<metric>`` for every metric the results table will hold."""
    dm = trainer.datamodule
    tasks = getattr(dm, "task_specs", [])
    return [f"hp/test/{t.name}/{metric}" for t in tasks for metric in task_columns(t.metrics)]


class RunSummary(Callback):
    """Writes the run's settings and headline metrics to TensorBoard's hparams view."""

    def __init__(self) -> None:
        self.best: tuple[float, int] | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        metrics = {"hp/best_val_loss": math.nan, "hp/best_step": math.nan}
        metrics.update({name: math.nan for name in test_metric_names(trainer)})
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # One hparams record per run, this one: Lightning's own (settings only, with a placeholder
                # hp_metric) would replace it and the metrics above would not show in the HPARAMS tab.
                logger._default_hp_metric = False
                logger.log_hyperparams(run_settings(trainer, pl_module), metrics)
            elif isinstance(logger, MLFlowLogger | WandbLogger):
                settings = {**run_settings(trainer, pl_module), "dir": str(Path(trainer.default_root_dir).resolve())}
                logger.log_hyperparams({f"run/{key}": value for key, value in settings.items()})

    def on_validation_end(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics["val/loss"])
        if self.best is None or value < self.best[0]:
            self.best = (value, trainer.global_step)
            for logger in trainer.loggers:
                logger.log_metrics(
                    {"hp/best_val_loss": value, "hp/best_step": float(trainer.global_step)}, step=trainer.global_step
                )

    def state_dict(self) -> dict[str, Any]:
        return {"best": list(self.best) if self.best else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        best = state_dict.get("best")
        self.best = (float(best[0]), int(best[1])) if best else None
