"""Records which examples every rank trained on, step by step: the evidence for data-order claims.

One JSON line per training batch in ``<dirpath>/rank<N>.jsonl`` (epoch, batch index, global step
after the batch, example ids), flushed at once so it survives a killed process. Used to check
that DDP ranks see disjoint shards and that a resumed run repeats and skips nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class SampleAudit(Callback):
    """Logs the example ids of each training batch per rank.

    Args:
        dirpath: Folder for the ``rank<N>.jsonl`` files; default ``<trainer.default_root_dir>/sample_audit``.
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath
        self._file: Any = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = Path(self.dirpath or Path(trainer.default_root_dir) / "sample_audit")
        folder.mkdir(parents=True, exist_ok=True)
        self._file = open(folder / f"rank{trainer.global_rank}.jsonl", "a", encoding="utf-8")

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._file is None or "example_id" not in batch:
            return
        self._file.write(
            json.dumps(
                {
                    "epoch": trainer.current_epoch,
                    "batch_idx": batch_idx,
                    "step": trainer.global_step,
                    "ids": batch["example_id"],
                }
            )
            + "\n"
        )
        self._file.flush()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)
