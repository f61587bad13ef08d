"""How a run's splits were made, recorded beside its adapter and checked before the adapter is scored.

``fit`` records in the adapter's ``training_history.json`` (key ``splits``) the settings that make
the splits (``data.source``, ``seed``, ``val_fraction``, ``max_val_examples_per_task``, the data
files) and, per task, the row count of its train, selection and evaluation rows with a hash of
their row ids. A row's id is a hash of its content, so other data under the same file name is
other rows; a split's hash ignores row order, so a task's own validation or test split shuffled
by another seed is still the same split.

``test`` and standalone ``validate`` with ``model.adapter`` make the evaluation rows again from
the current settings and stop with one line when a task's rows are not the recorded ones: under
another seed or fraction, rows carved out of the training rows would include rows the adapter
trained on or was picked by, and the table would overstate it. The line names the setting that
differs and the value to pass. An adapter without the record (an older one) gets a warning.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

RECORDED_SETTINGS = ("source", "seed", "val_fraction", "max_val_examples_per_task")
SPLITS = ("train", "selection", "evaluation")


def recorded_splits(adapter: str | Path) -> dict[str, Any] | None:
    """The ``splits`` an adapter folder's ``training_history.json`` records; None when it has none."""
    history = Path(adapter) / "training_history.json"
    return json.loads(history.read_text()).get("splits") if history.is_file() else None


def iter_rows(rows: Any) -> Iterator[dict]:
    """The rows of a ``datasets.Dataset`` (read in batches: much faster than one by one) or a list."""
    if isinstance(rows, list):
        yield from rows
        return
    for batch in rows.iter(batch_size=1000):
        yield from (dict(zip(batch, values)) for values in zip(*batch.values()))


def row_id(row: Mapping[str, Any]) -> str:
    """A row's id: a hash of its content (any column order)."""
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rows_digest(rows: Any) -> dict[str, Any]:
    """``{"rows": count, "hash": ...}`` of a set of rows; the hash does not depend on their order."""
    ids = sorted(row_id(row) for row in iter_rows(rows))
    return {"rows": len(ids), "hash": hashlib.sha256("\n".join(ids).encode()).hexdigest()}


def split_record(
    settings: Any, files: Mapping[str, Mapping[str, str]], tasks: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """What ``training_history.json`` records about the splits: the settings and ``tasks``
    (``{task: {split: rows_digest}}``)."""
    return {
        **{name: getattr(settings, name) for name in RECORDED_SETTINGS},
        "data_files": {task: dict(paths) for task, paths in files.items()},
        "tasks": {task: dict(digests) for task, digests in tasks.items()},
    }


def split_mismatch(
    record: Mapping[str, Any],
    settings: Any,
    files: Mapping[str, Mapping[str, str]],
    task: str,
    evaluation: Mapping[str, Any],
    adapter: str,
) -> str | None:
    """None when ``evaluation`` (the digest of ``task``'s evaluation rows under the current
    settings) is the recorded one, else the one-line reason and what to do."""
    recorded = record["tasks"].get(task, {}).get("evaluation")
    if recorded is None or recorded["hash"] == evaluation["hash"]:
        return None
    where = (
        f"task {task!r} would be scored on {evaluation['rows']} rows other than the {recorded['rows']} "
        f"held out when adapter {adapter!r} was trained (they may include rows it trained on or was picked by)"
    )
    changed = [
        f"--data.{name} {json.dumps(record[name])}"
        for name in ("seed", "val_fraction", "source")
        if name in record and record[name] != getattr(settings, name)
    ]
    if changed:
        return f"{where}; pass {' '.join(changed)} as in training"
    was, now = record.get("data_files", {}).get(task), files.get(task)
    if was != now:
        return f"{where}; its data files differ (trained with {was or 'none'}, now {now or 'none'}): give those"
    return f"{where}; its data changed since training: score it on the rows it was trained beside, or train again"
