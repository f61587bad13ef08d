"""``last.ckpt``, kept current: every N optimizer steps, at the end of fit, and on preemption (SIGTERM).

Lightning's monitoring ModelCheckpoint defers step-based saves until its metric exists (after the
first validation), which would leave a long first epoch unprotected; this one monitors nothing, so
``--ckpt_path last`` always finds a checkpoint at most N steps old. Lightning turns SIGTERM into
``SIGTERMException`` at the end of the current batch, and the checkpoint is written right then,
so a preempted run resumes losing nothing. Writes go through the trainer's checkpoint IO
(atomic: temp file and rename).

Why not Lightning's own parts alone: a stock ``ModelCheckpoint(save_last=True)`` saves at the end of
fit only if it never saved (a run ending between two intervals would resume from the older step),
and ``ModelCheckpoint(save_on_exception=True)`` or ``OnExceptionCheckpoint`` save on *any*
exception, which would overwrite a good ``last.ckpt`` with the state of a run stopped for a
non-finite loss (docs/reliability.md: that checkpoint is kept as it was); ``OnExceptionCheckpoint``
also writes another file, which ``--ckpt_path last`` does not find, and deletes it at teardown.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


class LastCheckpoint(ModelCheckpoint):
    """Saves ``<dirpath>/last.ckpt`` every ``every_n_train_steps`` steps, at the end of fit and on SIGTERM.

    Lightning's ``ModelCheckpoint`` (monitoring nothing, keeping no top-k) does the periodic saves;
    this adds the save at the end of fit whenever ``last.ckpt`` is older than the last step, and the
    save on SIGTERM only (see the module docstring).

    Args:
        dirpath: Checkpoint folder; the CLI links it to ``<trainer.default_root_dir>/ckpt``.
        every_n_train_steps: Optimizer steps between saves: at most this many are lost to a crash.
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 50):
        super().__init__(
            dirpath=dirpath, monitor=None, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps
        )

    @property
    def last_path(self) -> Path:
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    def save_now(self, trainer: Trainer) -> None:
        trainer.save_checkpoint(self.last_path, weights_only=False)  # with optimizer and loop state, to resume
        self._last_global_step_saved = trainer.global_step

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step:
            self.save_now(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit" and self.dirpath:
            self.save_now(trainer)
            rank_zero_info(
                f"SIGTERM: saved {self.last_path} at step {trainer.global_step}; resume with --ckpt_path last"
            )
