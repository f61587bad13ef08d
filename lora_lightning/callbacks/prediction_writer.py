"""Writes ``predict`` results as JSON Lines: each input row with its ``completion`` added, in input order."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from lora_lightning.atomic_write import atomic_file, check_writable_file
from lora_lightning.distributed import gather_objects, unique_by


class JsonlPredictionWriter(BasePredictionWriter):
    """Saves the completions of ``lora-lightning predict``.

    Under DDP every rank's rows are gathered, the distributed sampler's padding repeats dropped,
    and the file holds each input row exactly once, in input order.

    Args:
        output: File to write; by default ``<trainer.default_root_dir>/predictions.jsonl``. Written
            to a temporary file and renamed, so an interrupted run leaves no partial output, and
            recorded in its folder's manifest as this project's file.
        overwrite: Replace an existing ``output`` that this project did not write. Without it such
            a file is refused when predict starts, before the model is loaded.
    """

    def __init__(self, output: str | None = None, overwrite: bool = False):
        super().__init__(write_interval="epoch")
        self.output = output
        self.overwrite = overwrite

    def target(self, trainer: Trainer) -> Path:
        return Path(self.output or Path(trainer.default_root_dir) / "predictions.jsonl")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "predict":  # every rank checks (read only), so all stop together
            check_writable_file(self.target(trainer), self.overwrite, "--predictions.overwrite true")

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Sequence[Any], batch_indices: Sequence[Any]
    ) -> None:
        # One predict dataloader: a list of batch outputs, and the dataset index of each row.
        indices = batch_indices[0] if len(batch_indices) == 1 else batch_indices
        pairs = [
            {"index": int(i), "row": row} for batch, where in zip(predictions, indices) for i, row in zip(where, batch)
        ]
        rows = sorted(unique_by(gather_objects(pairs), "index"), key=lambda p: p["index"])
        if not trainer.is_global_zero:
            return
        target = self.target(trainer)
        check_writable_file(target, self.overwrite, "--predictions.overwrite true")
        with atomic_file(target, record=True) as f:
            for pair in rows:
                f.write(json.dumps(pair["row"], ensure_ascii=False) + "\n")
        rank_zero_info(f"Wrote {len(rows)} completions to {target}")
