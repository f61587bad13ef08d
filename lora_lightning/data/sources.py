"""Where rows come from: the bundled demo mix, the Hugging Face Hub, local files, prompt files.

All three go through ``datasets.load_dataset``, so Hub and local data are read, cached and typed
the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lora_lightning.data.tasks import TaskSpec
from lora_lightning.errors import UserInputError, first_line

DEMO_DIR = Path(__file__).parent / "demo"
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SPLITS = ("train", "validation", "test")


class DataSourceError(UserInputError):
    """Data that cannot be found or read; the message names the task and the file."""


def normalize_data_files(task: str, spec: str | Mapping[str, str]) -> dict[str, str]:
    """``path`` (a train file) or ``{split: path}`` → ``{split: path}``, checked to exist."""
    files = {"train": spec} if isinstance(spec, str) else dict(spec)
    for split, path in files.items():
        if split not in SPLITS:
            raise DataSourceError(f"task {task!r}: data file split {split!r} is not one of {', '.join(SPLITS)}")
        suffix = Path(path).suffix.lower()
        if suffix not in FILE_BUILDERS:
            raise DataSourceError(f"task {task!r}: {path!r} is not a .jsonl, .json, .csv or .parquet file")
        if not Path(path).is_file():
            raise DataSourceError(f"task {task!r}: data file {path!r} does not exist")
    return files


def demo_files(task: TaskSpec) -> dict[str, str]:
    folder = DEMO_DIR / task.name
    files = {split: str(folder / f"{split}.jsonl") for split in SPLITS if (folder / f"{split}.jsonl").is_file()}
    if "train" not in files:
        demo = ", ".join(sorted(p.name for p in DEMO_DIR.iterdir() if p.is_dir()))
        raise DataSourceError(
            f"task {task.name!r} has no bundled demo data (demo tasks: {demo}); "
            f"use data.source=hub or give data.data_files.{task.name}"
        )
    return files


def load_file(task: TaskSpec, path: str) -> Any:
    import datasets

    if Path(path).stat().st_size == 0:
        raise DataSourceError(f"task {task.name!r}: data file {path!r} is empty")
    builder = FILE_BUILDERS[Path(path).suffix.lower()]
    try:
        ds = datasets.load_dataset(builder, data_files=path, split="train")
    except Exception as err:  # datasets raises many types for unreadable files
        reason = first_bad_json_line(path) if builder == "json" else None
        reason = reason or first_line(err)
        raise DataSourceError(f"task {task.name!r}: cannot read {path!r}: {reason}") from None
    return check_columns(task, ds, path)


def first_bad_json_line(path: str) -> str | None:
    """Where a JSON Lines file stops being valid (datasets' own error does not say)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.read(1)
        if first == "[":  # a .json array, not JSON Lines
            return None
        f.seek(0)
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    return f"line {number} is not valid JSON ({err.msg} at column {err.colno})"
                if not isinstance(row, dict):
                    return f"line {number} is not a JSON object"
    return None


def load_hub(task: TaskSpec, split: str) -> Any:
    import datasets

    hub_split = task.splits.get(split)
    if not task.hub_path or not hub_split:
        raise DataSourceError(f"task {task.name!r} has no Hub {split} split")
    try:
        ds = datasets.load_dataset(task.hub_path, task.hub_name, split=hub_split)
    except Exception as err:
        raise DataSourceError(
            f"task {task.name!r}: cannot load {task.hub_path!r} split {hub_split!r} from the Hub "
            f"({first_line(err)}); without network use data.source=demo "
            "or local data.data_files"
        ) from None
    return check_columns(task, ds, task.hub_path)


def check_columns(task: TaskSpec, ds: Any, origin: str) -> Any:
    missing = [c for c in task.columns if c not in ds.column_names]
    if missing:
        raise DataSourceError(
            f"task {task.name!r}: {origin!r} lacks column(s) {', '.join(missing)} (it has {', '.join(ds.column_names)})"
        )
    if len(ds) == 0:
        raise DataSourceError(f"task {task.name!r}: {origin!r} has no rows")
    return ds


def load_task_splits(
    task: TaskSpec, source: str, files: Mapping[str, str] | None, wanted: tuple[str, ...] = ("train", "validation")
) -> dict[str, Any]:
    """Those of the ``wanted`` splits the task has, as ``datasets.Dataset`` objects."""
    if files is None and source == "demo":
        files = demo_files(task)
    if files is not None:
        return {split: load_file(task, path) for split, path in files.items() if split in wanted}
    if source == "hub":
        return {split: load_hub(task, split) for split in wanted if task.splits.get(split)}
    raise DataSourceError(f"data.source must be 'demo' or 'hub', got {source!r}")


def read_prompt_rows(path: str) -> list[dict]:
    """Prompt rows of a JSON Lines file (``predict``), each checked to be an object with a string ``prompt``."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserInputError(f"{path!r} line {number} is not valid JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise UserInputError(f'{path!r} line {number} needs a string "prompt"')
            rows.append(row)
    if not rows:
        raise UserInputError(f"{path!r} holds no prompts")
    return rows


def collate_prompt_rows(rows: list[dict]) -> dict[str, list]:
    return {"prompt": [r["prompt"] for r in rows], "rows": rows}
