"""Writes ``predict`` results as JSON Lines: each input row with its ``completion`` added."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info


class JsonlPredictionWriter(BasePredictionWriter):
    """Saves the completions of ``lora-lightning predict``.

    Args:
        output: File to write; by default ``<trainer.default_root_dir>/predictions.jsonl``. Written
            to a temporary file and renamed, so an interrupted run leaves no partial output.
    """

    def __init__(self, output: str | None = None):
        super().__init__(write_interval="epoch")
        self.output = output

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        if not trainer.is_global_zero:
            return
        target = Path(self.output or Path(trainer.default_root_dir) / "predictions.jsonl")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        count = 0
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for batch in predictions:  # one predict dataloader: a list of batch outputs
                    for row in batch:
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
                        count += 1
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        rank_zero_info(f"Wrote {count} completions to {target}")
