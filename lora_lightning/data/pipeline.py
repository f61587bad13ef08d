"""From task rows to the three disjoint sets a run uses, and the training set to tokens.

Every task's rows are split three ways, disjoint by row:

- **train**: what the model learns from (mixed across tasks, capped, templated, tokenized);
- **selection**: the validation loss during ``fit``, which picks the best adapter;
- **evaluation**: what the results table scores (``test`` / standalone ``validate``), never seen
  by training nor by checkpoint selection.

A task's own splits are used where it has them: with a (labelled) test split, selection is its
validation split and evaluation its test split; with a validation split only, evaluation is that
validation split (comparable to published numbers) and selection is carved out of the training rows;
with training rows only, both are carved from them (seeded, selection first, evaluation next). A
carved slice takes ``val_fraction`` of the rows, capped by the count that will be used of it:
``max_val_examples_per_task`` for selection, ``eval_examples_per_task`` for evaluation (None: no cap).
A small set keeps the fraction; a big one gives every other row to training (400,000 rows: 200 and
100 held out, not 40,000 each). A task whose rows come in groups (``eval.group_by``: common_gen's
concept sets, each with several reference sentences) is carved by group, the fraction and caps
counting groups, so no selection or evaluation row shares its group with a training row. Which split
played which part is recorded (the adapter's ``training_history.json`` and the title of the results
table), and so is how the splits were made, caps included (:mod:`.split_record`): ``test`` with an
adapter checks it.

Tokenization writes Arrow files that the run memory-maps (:mod:`.prepare`), with each example's
``length`` and ``completion_tokens`` as columns, so nothing downstream reads every row into memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from lora_lightning.data.cache import cache_key, file_fingerprint, tokenizer_fingerprint
from lora_lightning.data.eval_examples import EvalExample, build_eval_examples
from lora_lightning.data.mapped_pages import in_file_order, mapped_files, release_due, release_mapped_pages
from lora_lightning.data.mixing import STRATEGIES, mixture_counts, take_indices
from lora_lightning.data.sources import demo_files, load_task_splits, normalize_data_files
from lora_lightning.data.split_record import (
    SPLITS,
    carve_mismatch,
    iter_rows,
    recorded_caps,
    row_ids,
    rows_digest,
    split_mismatch,
)
from lora_lightning.data.tasks import TaskError, TaskSpec, load_task
from lora_lightning.data.tokenization import IGNORE_INDEX, encode_pairs
from lora_lightning.errors import UserInputError

SELECTION_INDEX_BASE = 1_000_000_000  # template draws of selection rows never repeat training ones
NUM_PROC_MIN_ROWS = 50_000  # rows of one task from which tokenizing in several processes pays back
TOKENIZED_COLUMNS = {  # column: (type, a list per example); lengths and label counts come with the ids
    "input_ids": ("int32", True),
    "labels": ("int32", True),
    "task": ("string", False),
    "example_id": ("string", False),
    "length": ("int32", False),
    "completion_tokens": ("int32", False),
}


@dataclass(frozen=True)
class DataSettings:
    """What shapes the data of a run, checked once when it is made."""

    source: str = "demo"
    seed: int = 42
    val_fraction: float = 0.1
    max_examples_per_task: int | None = None
    max_val_examples_per_task: int | None = 200
    mixing: str = "proportional"
    mixing_temperature: float = 2.0
    max_length: int = 512
    num_proc: int | None = None
    eval_examples_per_task: int | None = 100
    eval_shots: int = 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DataSettings:
        """The settings among ``values`` (a data module's hyperparameters)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def __post_init__(self) -> None:
        for name in ("max_examples_per_task", "max_val_examples_per_task", "eval_examples_per_task"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserInputError(f"data.{name} must be positive or null, got {value}")
        if self.num_proc is not None and self.num_proc < 1:
            raise UserInputError(f"data.num_proc must be 1 or more, or null (set from the cores), got {self.num_proc}")
        if self.eval_shots < 0:
            raise UserInputError(f"data.eval_shots must be 0 or more, got {self.eval_shots}")
        if not 0.0 < self.val_fraction < 0.5:
            raise UserInputError(f"data.val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.max_length < 8:
            raise UserInputError(f"data.max_length must be at least 8, got {self.max_length}")
        if self.mixing not in STRATEGIES:
            raise UserInputError(f"data.mixing must be one of {', '.join(STRATEGIES)}, got {self.mixing!r}")
        if self.mixing_temperature <= 0:
            raise UserInputError(f"data.mixing_temperature must be positive, got {self.mixing_temperature}")
        if self.source not in ("demo", "hub"):
            raise UserInputError(f"data.source must be 'demo' or 'hub', got {self.source!r}")


def load_tasks(
    names: Sequence[str], data_files: Mapping[str, Any], eval_only: Sequence[str] = ()
) -> tuple[list[TaskSpec], list[TaskSpec], dict[str, dict]]:
    """The task specs of ``data.tasks``, those of ``data.eval_tasks`` (scored, never trained on), and
    the checked ``data.data_files`` of either (``{task: {split: path}}``)."""
    if not names:
        raise UserInputError("data.tasks is empty; name at least one task")
    specs = [load_task(t) for t in names]
    unseen = [load_task(t) for t in eval_only]
    seen = [t.name for t in specs]
    if len(set(seen)) != len(seen):
        raise UserInputError(f"data.tasks names a task twice: {seen}")
    both = sorted({t.name for t in unseen} & set(seen))
    if both:
        raise UserInputError(f"data.eval_tasks names trained task(s) {both}; an unseen task is one not in data.tasks")
    if len({t.name for t in unseen}) != len(unseen):
        raise UserInputError(f"data.eval_tasks names a task twice: {[t.name for t in unseen]}")
    unknown = set(data_files) - set(seen) - {t.name for t in unseen}
    if unknown:
        raise UserInputError(
            f"data.data_files names task(s) {sorted(unknown)} that are not in data.tasks or data.eval_tasks"
        )
    return specs, unseen, {t: normalize_data_files(t, spec) for t, spec in data_files.items()}


def data_cache_key(
    tokenizer: Any,
    tasks: Sequence[TaskSpec],
    files: Mapping[str, Mapping[str, str]],
    settings: DataSettings,
    prompt_format: str | None,
) -> str:
    """The cache key of a run's tokenized data: everything that shaped it, data files by fingerprint."""
    sources = {}
    for task in tasks:
        task_files = files.get(task.name) or (demo_files(task) if settings.source == "demo" else None)
        sources[task.name] = (
            {s: file_fingerprint(p) for s, p in task_files.items()}
            if task_files is not None
            else [task.hub_path, task.hub_name, dict(task.splits)]
        )
    return cache_key(
        {
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "tasks": list(tasks),
            "sources": sources,
            "settings": settings,
            "prompt_format": prompt_format,
            "layout": 5,  # 5: examples in file order; 4: carves capped by the counts used, Arrow files per task
        }
    )


def describe_counts(stats: Mapping[str, Mapping[str, Any]], max_length: int) -> list[str]:
    """One log line per task: how many examples went where, and how many did not fit."""
    return [
        f"Task {name}: {s['train']} train, {s['validation']} selection ({s['selection_split']}), "
        f"{s['evaluation_rows']} evaluation rows ({s['evaluation_split']})"
        + (f"; {s['dropped_too_long']} dropped as longer than max_length={max_length}" if s["dropped_too_long"] else "")
        for name, s in stats.items()
    ]


@dataclass
class TaskSplits:
    """One task's rows, three ways, and the name of the split each came from."""

    train: Any
    selection: Any
    evaluation: Any
    names: dict[str, str]


def held_out_counts(groups: int, fraction: float, caps: Sequence[int | None]) -> list[int]:
    """How many groups (rows, for an ungrouped task) each carved slice takes: ``fraction`` of them
    (at least one), capped by the count that will be used (``caps``: one per slice, None: no cap)."""
    share = max(1, int(round(groups * fraction)))
    return [share if cap is None else min(share, cap) for cap in caps]


def carve_slices(
    task: TaskSpec, train: Any, caps: Sequence[int | None], settings: DataSettings
) -> tuple[list[Any], Any, list[int]]:
    """Seeded slices of a task's training rows, one per entry of ``caps``, the rest to train on, and
    the size of each slice (:func:`held_out_counts`: ``val_fraction``, capped).

    The rows are ordered by a seeded permutation (``Dataset.shuffle(seed)``'s), kept as a numpy array;
    slice k takes the next ``counts[k]`` groups of that order. Rows are held out by group when the
    task's rows come in groups (``eval.group_by``): a whole group goes to one set, so no held-out row
    shares its group (common_gen: its concept set) with a training row. Without groups each row is
    its own group."""
    order = np.random.default_rng(settings.seed).permutation(len(train))
    column = task.eval.group_by
    if column and column.split(".")[0] not in train.column_names:
        raise TaskError(f"task {task.name!r}: rows have no column {column!r} (its eval.group_by)")
    if column:
        codes: dict[str, int] = {}
        rows = iter_rows(train.select_columns(column.split(".")[0]))
        keys = [codes.setdefault(str(task.column_value(row, column)), len(codes)) for row in rows]
        shuffled = np.asarray(keys, dtype=np.int64)[order]
        groups = len(codes)
        _, first = np.unique(shuffled, return_index=True)
        rank = np.empty(groups, dtype=np.int64)
        rank[shuffled[np.sort(first)]] = np.arange(groups)  # each group's place in the shuffled order
        position = rank[shuffled]
    else:
        groups, position = len(train), np.arange(len(train))
    counts = held_out_counts(groups, settings.val_fraction, caps)
    if groups < sum(counts) + 1:
        counted = f"{len(train)} training rows" + (f" in {groups} groups of {column}" if column else "")
        raise UserInputError(
            f"task {task.name!r} has {counted}, too few to hold out "
            f"{' and '.join(map(str, counts))} and train on the rest; give it more rows or a validation split"
        )
    bounds = np.cumsum([0, *counts])
    carved = [train.select(order[(position >= lo) & (position < hi)]) for lo, hi in zip(bounds[:-1], bounds[1:])]
    return carved, train.select(order[position >= bounds[-1]]), counts


def split_task(
    task: TaskSpec, files: Mapping[str, str] | None, settings: DataSettings, evaluation_only: bool = False
) -> TaskSplits:
    """The train / selection / evaluation rows of a task (see the module docstring for the rule).

    ``evaluation_only`` (a task of ``data.eval_tasks``): a source without a train split is fine, its
    test (else validation) split is the evaluation."""
    splits = load_task_splits(task, settings.source, files, ("train", "validation", "test"))
    if "train" not in splits:
        held = "test" if "test" in splits else "validation" if "validation" in splits else None
        if not evaluation_only or held is None:
            raise UserInputError(
                f"task {task.name!r} has no train rows (its data gives only {sorted(splits) or 'nothing'}); "
                "give it a train file, or name it in data.eval_tasks to score it without training"
            )
        rows = splits[held]
        return TaskSplits(rows.select([]), rows.select([]), rows.shuffle(seed=settings.seed), {"evaluation": held})
    train = splits["train"]
    have_val, have_test = "validation" in splits, "test" in splits
    # slices to hold out of train: selection unless the task has both splits, evaluation too when it has neither
    caps = [] if have_val and have_test else [settings.max_val_examples_per_task]
    if not have_val and not have_test:
        caps.append(settings.eval_examples_per_task)
    carved: list[Any] = []
    names: list[str] = []
    if caps:
        carved, train, counts = carve_slices(task, train, caps, settings)
        unit = f"{task.eval.group_by} groups" if task.eval.group_by else "rows"
        names = [
            f"train ({'another ' if k else ''}"
            + (f"{100 * settings.val_fraction:g}%" if cap is None or n < cap else f"{n} {unit}")
            + " held out)"
            for k, (n, cap) in enumerate(zip(counts, caps))
        ]
    if have_test:
        evaluation, eval_name = splits["test"], "test"
        selection, sel_name = (splits["validation"], "validation") if have_val else (carved[0], names[0])
    elif have_val:
        evaluation, eval_name = splits["validation"], "validation"
        selection, sel_name = carved[0], names[0]
    else:
        selection, sel_name = carved[0], names[0]
        evaluation, eval_name = carved[1], names[1]
    return TaskSplits(
        train,
        selection.shuffle(seed=settings.seed),
        evaluation.shuffle(seed=settings.seed),
        {"selection": sel_name, "evaluation": eval_name},
    )


def tokenized_features() -> Any:
    """The ``datasets.Features`` of :data:`TOKENIZED_COLUMNS`."""
    import datasets

    return datasets.Features(
        {
            name: datasets.List(datasets.Value(kind)) if many else datasets.Value(kind)
            for name, (kind, many) in TOKENIZED_COLUMNS.items()
        }
    )


def tokenize_processes(setting: int | None, rows: int) -> int:
    """Processes that tokenize ``rows`` rows: ``data.num_proc`` when set; for None, ``min(cores, 8)``
    when there are at least :data:`NUM_PROC_MIN_ROWS` rows (enough to pay back starting the
    processes, about a second each), else one."""
    if setting is not None:
        return setting
    return min(os.cpu_count() or 1, 8) if rows >= NUM_PROC_MIN_ROWS else 1


def encode_task_rows(
    task: TaskSpec,
    rows: Any,
    tokenizer: Any,
    prompt_format: str,
    settings: DataSettings,
    origin: str,
    target: Path,
    index_base: int = 0,
) -> tuple[Any, int]:
    """Template-fill and tokenize one task's rows (batched, :func:`tokenize_processes` processes) into
    the Arrow file(s) ``target`` (memory-mapped: the rows never all sit in memory). The rows are read
    in file order (:func:`.mapped_pages.in_file_order`), so the examples come out in that order, each
    numbered (``example_id``, template draw) by its place in ``rows``.

    Returns the kept examples (:data:`TOKENIZED_COLUMNS`: input_ids, labels, task, example_id,
    length, completion_tokens) and how many were dropped as too long."""
    import datasets

    ordered, order = in_file_order(rows)  # read front to back; example i keeps its number and template draw
    files = mapped_files(ordered)

    def fill_and_tokenize(batch: dict[str, list], positions: list[int]) -> dict[str, list]:
        indices = positions if order is None else order[positions].tolist()
        if files and positions and release_due(positions[0], len(positions)):
            release_mapped_pages(files)  # this worker's pages of the rows it has tokenized
        rows_in_batch = [dict(zip(batch, values)) for values in zip(*batch.values())]
        try:
            pairs = [task.format_random(row, settings.seed, index_base + i) for row, i in zip(rows_in_batch, indices)]
        except TaskError as err:
            raise TaskError(f"{err} (in {origin})") from None
        encoded = encode_pairs(
            tokenizer, [p for p, _ in pairs], [c for _, c in pairs], settings.max_length, prompt_format
        )
        kept = [(e, i) for e, i in zip(encoded, indices) if e is not None]  # too long: dropped (counted)
        return {
            "input_ids": [e.input_ids for e, _ in kept],
            "labels": [e.labels for e, _ in kept],
            "task": [task.name] * len(kept),
            "example_id": [f"{task.name}:{index_base + i}" for _, i in kept],
            "length": [len(e.input_ids) for e, _ in kept],
            "completion_tokens": [sum(label != IGNORE_INDEX for label in e.labels) for e, _ in kept],
        }

    features = tokenized_features()
    if len(rows) == 0:
        return datasets.Dataset.from_dict({k: [] for k in TOKENIZED_COLUMNS}, features=features), 0
    processes = max(1, min(tokenize_processes(settings.num_proc, len(rows)), len(rows)))
    mapped = ordered.map(
        fill_and_tokenize,
        batched=True,
        with_indices=True,
        remove_columns=rows.column_names,
        features=features,
        num_proc=processes if processes > 1 else None,
        cache_file_name=str(target),
        new_fingerprint=target.stem,  # the data cache key names it; datasets need not hash the tokenizer
        load_from_cache_file=False,
        desc=f"Tokenizing {task.name}",
    )
    return mapped, len(rows) - len(mapped)


def column_sum(dataset: Any, column: str) -> int:
    """The sum of an integer column, read as one numpy array (no Python object per row)."""
    return int(np.asarray(dataset.with_format("numpy")[column], dtype=np.int64).sum()) if len(dataset) else 0


def build_tokenized(
    tasks: Sequence[TaskSpec],
    files: Mapping[str, Mapping[str, str]],
    tokenizer: Any,
    prompt_format: str,
    settings: DataSettings,
    workdir: Path,
) -> tuple[dict[str, list[Any]], dict[str, dict]]:
    """Per split (``train``, ``validation``: the selection set), each task's tokenized part (Arrow
    files under ``workdir``), and per-task counts."""
    started = time.perf_counter()
    parts: dict[str, TaskSplits] = {}
    for task in tasks:
        parts[task.name] = split_task(task, files.get(task.name), settings)
        limit = settings.max_val_examples_per_task
        sel = parts[task.name].selection
        if limit is not None and len(sel) > limit:
            parts[task.name].selection = sel.select(range(limit))
    counts = mixture_counts(
        {t: len(p.train) for t, p in parts.items()},
        settings.mixing,
        settings.max_examples_per_task,
        settings.mixing_temperature,
    )
    out: dict[str, list[Any]] = {"train": [], "validation": []}
    stats = {}
    for number, task in enumerate(tasks):
        p, origin = (
            parts[task.name],
            ", ".join(files[task.name].values()) if task.name in files else f"{settings.source} data",
        )
        picked = p.train.select(take_indices(len(p.train), counts[task.name], settings.seed))
        encode = (tokenizer, prompt_format, settings, origin)
        train_part, dropped_train = encode_task_rows(task, picked, *encode, workdir / f"train-{number}.arrow")
        val_part, dropped_val = encode_task_rows(
            task, p.selection, *encode, workdir / f"validation-{number}.arrow", SELECTION_INDEX_BASE
        )
        out["train"].append(train_part)
        out["validation"].append(val_part)
        stats[task.name] = {
            "available": len(p.train),
            "train": len(train_part),
            "validation": len(val_part),
            "dropped_too_long": dropped_train + dropped_val,
            "train_completion_tokens": column_sum(train_part, "completion_tokens"),
            "selection_split": p.names["selection"],
            "evaluation_split": p.names["evaluation"],
            "evaluation_rows": len(p.evaluation),
            "split_rows": {split: rows_digest(getattr(p, split)) for split in SPLITS},
        }
    if sum(len(x) for x in out["train"]) == 0:
        raise UserInputError(f"no training example fits in data.max_length={settings.max_length}; raise it")
    seconds = time.perf_counter() - started
    total = sum(len(x) for x in out["train"] + out["validation"])
    processes = tokenize_processes(settings.num_proc, max(counts.values()))
    rank_zero_info(
        f"Mix ({settings.mixing}): "
        + ", ".join(f"{t} {n}" for t, n in counts.items())
        + f"; tokenized {total} examples in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} examples/s, "
        f"data.num_proc {settings.num_proc} -> {processes} process(es) for the largest task)"
    )
    return out, stats


def evaluation_examples(
    tasks: Sequence[TaskSpec],
    files: Mapping[str, Mapping[str, str]],
    settings: DataSettings,
    limit: int | None = None,
    unseen: Sequence[str] = (),
) -> dict[str, list[EvalExample]]:
    """Per task, examples of its evaluation rows (never trained on, never used to pick the adapter);
    those of the ``unseen`` tasks (never trained on at all) are marked ``unseen``."""
    out = {}
    for task in tasks:
        p = split_task(task, files.get(task.name), settings, evaluation_only=task.name in unseen)
        shot_rows = (
            list(p.train.shuffle(seed=settings.seed).select(range(min(len(p.train), 64))))
            if settings.eval_shots
            else []
        )
        examples = build_eval_examples(
            task,
            list(p.evaluation),
            limit or settings.eval_examples_per_task,
            settings.seed,
            settings.eval_shots,
            shot_rows,
        )
        out[task.name] = [
            EvalExample(e, eval_id=f"{task.name}:{i}", split=p.names["evaluation"], unseen=task.name in unseen)
            for i, e in enumerate(examples)
        ]
    return out


def check_split_record(
    record: Mapping[str, Any] | None,
    tasks: Sequence[TaskSpec],
    files: Mapping[str, Mapping[str, str]],
    settings: DataSettings,
    unseen: Sequence[str],
    adapter: str,
) -> bool:
    """Stops (one line) when the current settings would score other evaluation rows of a task than
    those held out when ``adapter`` was trained (``record``: its ``training_history.json``'s
    ``splits``): the training carve is made again with the recorded caps and checked against the
    record, then the rows the current caps give must be among its evaluation rows
    (:mod:`.split_record`). False when there is no record to check against."""
    if not record or "tasks" not in record:
        return False
    trained = replace(settings, **recorded_caps(record))
    for task in tasks:
        if task.name not in record["tasks"]:
            continue  # the adapter never trained on this task: none of its rows can have been seen
        only = task.name in unseen
        parts = split_task(task, files.get(task.name), trained, evaluation_only=only)
        problem = split_mismatch(record, settings, files, task.name, rows_digest(parts.evaluation), adapter)
        if problem is None and trained != settings:
            now = split_task(task, files.get(task.name), settings, evaluation_only=only).evaluation
            problem = carve_mismatch(record, settings, task.name, row_ids(now), row_ids(parts.evaluation), adapter)
        if problem is not None:
            raise UserInputError(problem)
    return True
