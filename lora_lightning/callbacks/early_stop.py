"""Early stopping in one key: ``--early_stopping.patience N`` (off by default).

Lightning's ``EarlyStopping`` on the validation loss, or on any logged metric such as a task's own
``val/<task>/loss``. The adapter exported as ``adapter/`` is still the best one by
``adapter_export.monitor`` (``val/loss``), so a stopped run keeps the adapter of its best validation.
"""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping


class EarlyStop(EarlyStopping):
    """Stops ``fit`` once ``monitor`` has not improved for ``patience`` validations.

    Lightning's ``EarlyStopping`` with one thing more: it can be off (``patience`` null, the
    default), so the CLI always has the ``--early_stopping.*`` keys and a run checks nothing until
    one is set. Off, its two public check hooks do nothing.

    Args:
        patience: Validations without improvement before stopping; null (the default) never stops.
        monitor: Logged metric to watch: ``val/loss``, or e.g. ``val/xsum/loss``.
        min_delta: Smallest change that counts as an improvement.
        mode: ``min`` (losses) or ``max``.
    """

    def __init__(
        self, patience: int | None = None, monitor: str = "val/loss", min_delta: float = 0.0, mode: str = "min"
    ):
        super().__init__(monitor=monitor, patience=patience or 0, min_delta=min_delta, mode=mode, verbose=True)
        self.enabled = patience is not None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled:
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled:
            super().on_train_epoch_end(trainer, pl_module)
