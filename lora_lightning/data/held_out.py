"""The datamodule's held-out rows: the evaluation examples, what the adapter records about its splits,
and the check that an adapter is scored on the rows held out when it was trained.

A mixin of :class:`~lora_lightning.data.datamodule.FlanDataModule` (it reads the datamodule's task
specs, files, settings and statistics); the split logic itself is in :mod:`.pipeline` and :mod:`.split_record`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lora_lightning.data.eval_examples import EvalExample
from lora_lightning.data.pipeline import check_split_record, evaluation_examples
from lora_lightning.data.split_record import recorded_splits, split_record


class HeldOutRows:
    """Evaluation examples and split records of a FlanDataModule."""

    def eval_examples(self, limit: int | None = None) -> dict[str, list[EvalExample]]:
        """Per task, examples of its evaluation rows (never trained on, never used to pick the adapter),
        then those of ``eval_tasks`` (tasks never trained on)."""
        unseen = [t.name for t in self.unseen_specs]
        return evaluation_examples(self.task_specs + self.unseen_specs, self.files, self.settings, limit, unseen)

    def describe(self) -> dict[str, Any]:
        """What an exported adapter records about its data (``training_history.json``): counts per
        task, and how the splits were made (:mod:`.split_record`), which ``test`` checks."""
        data = {task: {k: v for k, v in s.items() if k != "split_rows"} for task, s in self.stats.items()}
        rows = {task: s["split_rows"] for task, s in self.stats.items() if "split_rows" in s}
        return {
            "prompt_format": self.prompt_format,
            "mixing": self.hparams.mixing,
            "data": data,
            "splits": split_record(self.settings, self.files, rows),
        }

    def check_split_record(self, record: dict[str, Any] | None, adapter: str) -> bool:
        """Stops with one line when these settings would score other evaluation rows than those held
        out when ``adapter`` was trained (``record``: the ``splits`` of its ``training_history.json``);
        False when there is no record (an older adapter)."""
        unseen = [t.name for t in self.unseen_specs]
        specs = self.task_specs + self.unseen_specs
        return check_split_record(record, specs, self.files, self.settings, unseen, adapter)

    def check_adapter_splits(self, adapter: str | Path) -> None:
        """Before ``adapter`` is scored (``test``, ``validate``, ``lm-eval-tasks``): its evaluation rows
        must be those held out when it was trained; otherwise one line and stop. An adapter that
        records no splits (an older version's) gets a warning."""
        if self.check_split_record(recorded_splits(adapter), str(adapter)):
            rank_zero_info(f"Evaluation rows checked: those held out when {adapter} was trained")
        else:
            rank_zero_warn(
                f"adapter {str(adapter)!r} does not record how its splits were made (trained by an older "
                "version): make sure data.seed, val_fraction and the data are those it was trained with"
            )
