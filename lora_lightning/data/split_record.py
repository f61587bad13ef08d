"""How a run's splits were made, recorded beside its adapter and checked before the adapter is scored.

``fit`` records in the adapter's ``training_history.json`` (key ``splits``) the settings that make
the splits (``data.source``, ``seed``, ``val_fraction``, ``max_val_examples_per_task``, the data
files) and, per task, the row count of its train, selection and evaluation rows with a hash of
their row ids. A row's id is a hash of its content, so other data under the same file name is
other rows; a split's hash ignores row order, so a task's own validation or test split shuffled
by another seed is still the same split.

Rows carved out of the training rows are capped by the counts used (:data:`CARVE_CAPS`:
``max_val_examples_per_task`` for selection, ``eval_examples_per_task`` for evaluation), so the record
holds those caps too (``carve_caps``). ``test`` and standalone ``validate`` with ``model.adapter`` make
the evaluation rows of the training carve again (the current seed, fraction and data, the recorded
caps) and stop with one line when they are not the recorded ones: under another seed or fraction,
rows carved out of the training rows would include rows the adapter trained on or was picked by, and
the table would overstate it. Then the rows the current caps would score must be among them: fewer
evaluation examples score a subset; more, or another selection cap, are refused. The line names the
setting that differs and the value to pass. An adapter without the record (an older one) gets a warning.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lora_lightning.data.mapped_pages import in_file_order, mapped_files, release_due, release_mapped_pages

RECORDED_SETTINGS = ("source", "seed", "val_fraction", "max_val_examples_per_task")
CARVE_CAPS = ("max_val_examples_per_task", "eval_examples_per_task")
"""The settings that cap the rows carved out of a task's training rows (selection, evaluation)."""
SPLITS = ("train", "selection", "evaluation")
READ_BATCH = 1000  # rows read at once (``Dataset.iter``: much faster than one by one)


def recorded_splits(adapter: str | Path) -> dict[str, Any] | None:
    """The ``splits`` an adapter folder's ``training_history.json`` records; None when it has none."""
    history = Path(adapter) / "training_history.json"
    return json.loads(history.read_text()).get("splits") if history.is_file() else None


def iter_rows(rows: Any) -> Iterator[dict]:
    """The rows of a ``datasets.Dataset`` (read in batches: much faster than one by one) or a list.

    The pages of the set's memory-mapped files that the pass reads are let go every
    :data:`.mapped_pages.RELEASE_EVERY_ROWS` rows and at the end, so a pass over a million rows does
    not leave the whole file resident."""
    if isinstance(rows, list):
        yield from rows
        return
    files = mapped_files(rows)
    for number, batch in enumerate(rows.iter(batch_size=READ_BATCH)):
        yield from (dict(zip(batch, values)) for values in zip(*batch.values()))
        if files and release_due(number * READ_BATCH, READ_BATCH):
            release_mapped_pages(files)
    release_mapped_pages(files)


def row_id(row: Mapping[str, Any]) -> str:
    """A row's id: a hash of its content (any column order)."""
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def row_ids(rows: Any) -> np.ndarray:
    """The sorted ids of a set of rows, as one array of 16-byte strings (not a Python object per row);
    read in file order (the ids are sorted anyway)."""
    ids, batch = [], []
    for row in iter_rows(rows if isinstance(rows, list) else in_file_order(rows)[0]):
        batch.append(row_id(row))
        if len(batch) == 10_000:
            ids.append(np.array(batch, dtype="S16"))
            batch = []
    ids.append(np.array(batch, dtype="S16"))
    return np.sort(np.concatenate(ids))


def rows_digest(rows: Any) -> dict[str, Any]:
    """``{"rows": count, "hash": ...}`` of a set of rows; the hash does not depend on their order
    (a SHA-256 of the sorted row ids, one a line)."""
    ids = row_ids(rows)
    digest = hashlib.sha256()
    for start in range(0, len(ids), 10_000):
        digest.update((b"\n" if start else b"") + b"\n".join(ids[start : start + 10_000].tolist()))
    return {"rows": len(ids), "hash": digest.hexdigest()}


def split_record(
    settings: Any, files: Mapping[str, Mapping[str, str]], tasks: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """What ``training_history.json`` records about the splits: the settings and ``tasks``
    (``{task: {split: rows_digest}}``)."""
    return {
        **{name: getattr(settings, name) for name in RECORDED_SETTINGS},
        "carve_caps": {name: getattr(settings, name) for name in CARVE_CAPS},
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


def recorded_caps(record: Mapping[str, Any]) -> dict[str, int | None]:
    """The caps an adapter's carve was made with; a record without them (an older version's, whose
    carve took ``val_fraction`` uncapped) gives None for each: the same carve."""
    return dict(record.get("carve_caps") or dict.fromkeys(CARVE_CAPS))


def carve_mismatch(
    record: Mapping[str, Any], settings: Any, task: str, now: np.ndarray, held: np.ndarray, adapter: str
) -> str | None:
    """None when the rows the current caps would score (``now``: their ids) are among those held out
    for evaluation when ``adapter`` was trained (``held``), else the one-line reason and the caps to pass.

    Selection is carved first and evaluation next, so a smaller ``eval_examples_per_task`` scores a
    subset of the held-out rows and passes; a larger one, or another ``max_val_examples_per_task``,
    would reach rows the adapter trained on or was picked by."""
    if np.isin(now, held).all():
        return None
    caps = recorded_caps(record)
    flags = [
        f"--data.{name} {json.dumps(was)}" + (" (or fewer)" if name == "eval_examples_per_task" and was else "")
        for name, was in caps.items()
        if was != getattr(settings, name)
    ]
    return (
        f"task {task!r} would be scored on {len(now)} rows, not all among the {len(held)} held out for "
        f"evaluation when adapter {adapter!r} was trained (the others trained it or picked it); "
        f"pass {' '.join(flags) or 'the caps it was trained with'} as in training"
    )
