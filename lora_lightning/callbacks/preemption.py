"""Saves ``last.ckpt`` when the run is preempted (SIGTERM), so a resume loses nothing.

Lightning turns SIGTERM into ``SIGTERMException`` at the end of the current training batch; this
callback then writes the checkpoint where ``--ckpt_path last`` looks for it (the ModelCheckpoint's
folder), through the trainer, so it is as complete and atomic as any other.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


class PreemptionCheckpoint(Callback):
    """On SIGTERM during ``fit``: save ``last.ckpt`` before exiting."""

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
        if not checkpoints:
            return
        path = Path(checkpoints[0].dirpath) / f"{checkpoints[0].CHECKPOINT_NAME_LAST}{checkpoints[0].FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        rank_zero_info(f"SIGTERM: saved {path} at step {trainer.global_step}; resume with --ckpt_path last")
