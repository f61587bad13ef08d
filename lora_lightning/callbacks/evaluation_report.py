"""The results table of ``test`` (and standalone ``validate``): task metrics, base vs adapter.

The module scores evaluation examples (:meth:`LoRAModule.test_step` returns them); this callback
collects them batch by batch (``on_test_batch_end``), then gathers them from every rank (each example
counted once: a distributed sampler's padding repeats are dropped), computes each task's metrics, logs
them (``test/<task>/<metric>``, ``test_base/<task>/<metric>``) and writes ``eval_results.md`` and
``.csv`` beside the adapter (or in the run folder). The table's title names the split each task was
scored on and its row count, and how many examples of how many training rows the adapter trained on
per task (its ``training_history.json``): rows that neither trained the adapter nor picked it, checked before scoring
against the splits the adapter's ``training_history.json`` records
(:mod:`lora_lightning.data.split_record`). A 0-shot score of an adapter folder also goes into that
folder's model card (``README.md``, when this project wrote it): the table in its evaluation section and
the adapter's values as the Hub's ``model-index`` metadata."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lora_lightning.atomic_write import atomic_file
from lora_lightning.distributed import gather_objects, unique_by
from lora_lightning.evaluation.report import as_csv, as_markdown, results_rows, task_metrics
from lora_lightning.export.model_card import card_results, card_section, write_card_evaluation


class EvaluationReport(Callback):
    """Turns the scored evaluation examples into metrics, logs and the results table.

    Args:
        dirpath: Folder for ``eval_results.md``/``.csv``; default: beside the adapter's folder when
            one is loaded, else ``trainer.default_root_dir``.
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath
        self.results: dict[str, dict[str, dict[str, float]]] = {}
        self.scored: dict[str, list[dict]] = {}  # this epoch's records per mode, as the steps returned them
        self.written: list[Path] = []  # the table's files, for the trackers (TrackerArtifacts)

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        """Before an adapter is scored: its evaluation rows must be those held out when it was
        trained (the ``splits`` of its ``training_history.json``); otherwise one line and stop."""
        adapter = pl_module.hparams.get("adapter")
        if stage in ("test", "validate") and adapter and hasattr(trainer.datamodule, "check_adapter_splits"):
            trainer.datamodule.check_adapter_splits(adapter)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.scored = {}

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.scored = {}

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        for mode, rows in (outputs or {}).get("scored", {}).items():
            self.scored.setdefault(mode, []).extend(rows)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if trainer.state.fn == "validate":  # standalone validate scores evaluation examples as test does
            self.on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.state.fn == "validate":
            self.report(trainer, pl_module, "validate")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        self.report(trainer, pl_module, "test")

    def report(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        records = {mode: unique_by(gather_objects(rows), "eval_id") for mode, rows in self.scored.items()}
        self.scored = {}
        if not records:
            return
        dm = trainer.datamodule
        specs = list(dm.task_specs) + list(getattr(dm, "unseen_specs", []))
        unseen = {t.name for t in getattr(dm, "unseen_specs", [])}
        self.results = {
            mode: {t.name: task_metrics(t, [r for r in rows if r["task"] == t.name]) for t in specs}
            for mode, rows in records.items()
        }
        for mode, per_task in self.results.items():
            prefix = stage if mode != "base" else f"{stage}_base"
            for task, values in per_task.items():
                group = f"{prefix}_unseen" if task in unseen else prefix  # TensorBoard: a section of their own
                for metric, value in values.items():
                    pl_module.log(f"{group}/{task}/{metric}", value, rank_zero_only=True)
        if not trainer.is_global_zero:
            return
        rows = results_rows(self.results)
        first = next(iter(records.values()))
        counts = {t.name: sum(r["task"] == t.name for r in first) for t in specs}
        splits = {r["task"]: r.get("split", "?") for r in first}

        def scored_on(tasks: list[str]) -> str:
            return "; ".join(f"{task} {counts[task]} ({splits.get(task, '?')})" for task in tasks)

        shots = dm.hparams.eval_shots
        versus = ", base model vs adapter" if "adapter" in records else ""
        trained = [t.name for t in dm.task_specs]
        title = (
            f"Evaluation rows never used for training or checkpoint selection ({shots}-shot, prompt format "
            f"{pl_module.prompt_format}{versus}): {scored_on(trained)}"
            + rows_trained(pl_module.hparams.get("adapter"), trained)
        )
        seen_rows = [r for r in rows if r["task"] not in unseen]
        unseen_rows = [r for r in rows if r["task"] in unseen]
        unseen_title = f"Tasks never trained on (data.eval_tasks): {scored_on(sorted(unseen))}" if unseen else ""
        markdown = as_markdown(seen_rows, f"## {title}")
        if unseen_rows:
            markdown += "\n" + as_markdown(unseen_rows, f"## {unseen_title}")
        csv_rows = [{**r, "trained": "no" if r["task"] in unseen else "yes"} for r in rows]
        adapter = pl_module.hparams.get("adapter")
        where = Path(self.dirpath or (Path(adapter).parent if adapter else trainer.default_root_dir))
        name = f"eval_results{'' if not shots else f'_{shots}shot'}"
        with atomic_file(where / f"{name}.md") as f:
            f.write(markdown)
        with atomic_file(where / f"{name}.csv") as f:
            f.write(as_csv(csv_rows))
        self.written = [where / f"{name}.md", where / f"{name}.csv"]
        rank_zero_info(f"{markdown}Written to {where / name}.md and .csv")
        if adapter and "adapter" in self.results and not shots:
            log_to_training_run(Path(adapter), self.results["adapter"])
            model_name = f"{Path(str(pl_module.base_model_path)).name}-lora"
            section = card_section(seen_rows, title)
            if unseen_rows:
                section += f"\n{unseen_title}.\n\n{as_markdown(unseen_rows)}"
            if write_card_evaluation(adapter, section, card_results(rows, splits), model_name):
                rank_zero_info(f"Results written into the model card {Path(adapter) / 'README.md'}")


def rows_trained(adapter: str | None, tasks: list[str]) -> str:
    """``". Trained on: bool_q 399,700 examples of 399,700 training rows"``, from the adapter's
    ``training_history.json`` (what its ``fit`` trained on, per task); empty without one."""
    history = Path(adapter) / "training_history.json" if adapter else None
    data = json.loads(history.read_text()).get("data", {}) if history is not None and history.is_file() else {}
    known = [t for t in tasks if "train" in data.get(t, {}) and "available" in data[t]]
    if not known:
        return ""
    return ". Trained on: " + "; ".join(
        f"{t} {data[t]['train']:,} examples of {data[t]['available']:,} training rows" for t in known
    )


def log_to_training_run(adapter: Path, results: dict[str, dict[str, float]]) -> None:
    """The adapter's results as ``hp/test/<task>/<metric>`` in the log folder of the ``fit`` that
    trained it (named in its ``training_history.json``), where its hparams record declared them:
    the HPARAMS tab then shows each run's settings with its evaluation."""
    history = adapter / "training_history.json"
    info = json.loads(history.read_text()) if history.is_file() else {}
    log_dir = info.get("log_dir")
    if not log_dir or not Path(log_dir).is_dir():
        return
    from torch.utils.tensorboard import SummaryWriter

    with contextlib.closing(SummaryWriter(log_dir)) as writer:
        for task, values in results.items():
            for metric, value in values.items():
                writer.add_scalar(f"hp/test/{task}/{metric}", value, info.get("global_step") or 0)
