"""The LightningDataModule: a FLAN-style task mix, formatted with templates and tokenized.

For each task: read its rows (bundled demo, Hub or local files), hold out validation rows when the
source has no validation split, pick each task's share of the training mix (``mixing``, capped by
``max_examples_per_task``, the guide's ``-n``), fill one of the task's templates per example (drawn
with a seeded RNG), tokenize with the loss on the completion only, and drop what cannot fit in
``max_length`` (counted in the log). The result is cached on disk, keyed by everything that shaped
it, and the DataLoader shuffles the mixed training set every epoch.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lora_lightning.data.cache import cache_key, file_fingerprint, load_cached, save_cached, tokenizer_fingerprint
from lora_lightning.data.mixing import STRATEGIES, mixture_counts, take_indices
from lora_lightning.data.sampling import ResumableSampler
from lora_lightning.data.sources import demo_files, load_task_splits, normalize_data_files
from lora_lightning.data.tasks import TaskError, TaskSpec, load_task
from lora_lightning.data.tokenization import PROMPT_FORMATS, CausalLMCollator, encode_pairs
from lora_lightning.errors import UserInputError
from lora_lightning.evaluation.examples import build_eval_examples
from lora_lightning.model.loading import DEFAULT_BASE_CACHE, EMBEDDED_MODEL, load_tokenizer, resolve_model_path

VALIDATION_INDEX_BASE = 1_000_000_000  # template draws of validation rows never repeat training ones


class FlanDataModule(LightningDataModule):
    """FLAN-style instruction data: a mix of tasks, each with its ten templates.

    Args:
        tasks: Task names from the registry (bool_q, common_gen, xsum, anli, squad, samsum, paws,
            cosmos_qa, ...) or paths of your own task YAML files.
        source: ``demo`` (bundled offline demo mix) or ``hub`` (each task's Hub dataset).
        data_files: Per task, a local file (.jsonl/.json/.csv/.parquet, Hub column names) used as
            its train split, or a mapping ``{train: path, validation: path}``. Overrides ``source``.
        max_examples_per_task: Per-task cap on training examples (the guide's ``-n``); None: no cap.
        max_val_examples_per_task: Validation examples kept per task; None keeps all.
        mixing: ``proportional`` (each task's capped size, FLAN's default), ``uniform`` (equal
            shares) or ``temperature`` (shares proportional to capped size^(1/mixing_temperature)).
        mixing_temperature: The T of ``temperature`` mixing; larger flattens the mix toward small tasks.
        val_fraction: Share of the training rows held out for validation when a task has no
            validation split of its own.
        prompt_format: ``plain`` FLAN text, or ``chat``: the tokenizer's chat template with the
            prompt as user turn and the completion as assistant turn (loss on the assistant turn only).
        max_length: Longest tokenized example; longer prompts are cut from the start, and examples
            whose completion alone does not fit are dropped (and counted).
        batch_size: Examples per batch and device (global batch = devices x batch_size x accumulate_grad_batches).
        group_by_length: Batch examples of similar length together (less padding, faster); batches
            stay in a seeded random order.
        num_workers: DataLoader worker processes.
        num_proc: Processes for tokenization (None: one).
        seed: Seed for row selection, template choice and validation hold-out.
        cache_dir: Where tokenized datasets are cached (None: no cache).
        tokenizer: Tokenizer source; the CLI links it to ``model.adapter`` or else ``model.model_name``.
        trust_remote_code: Allow tokenizer code from the model repository (linked to the model's setting).
        base_cache_dir: Cache of converted GGUF models (linked to the model's setting).
        predict_file: ``predict``: a JSON Lines file, one object per prompt with a ``prompt`` key
            (other keys are passed through to the output).
        eval_examples_per_task: ``test`` / ``validate``: held-out examples scored per task (None: all).
        eval_shots: ``test`` / ``validate``: training examples prepended to each prompt (0: zero-shot).
        eval_split: ``test`` / ``validate``: the held-out split scored, ``validation`` (held out of
            training when a task has none) or ``test``.
    """

    def __init__(
        self,
        tasks: list[str] = ["bool_q", "common_gen", "xsum"],  # noqa: B006 - shown as the CLI default
        source: Literal["demo", "hub"] = "demo",
        data_files: dict[str, str | dict[str, str]] | None = None,
        max_examples_per_task: int | None = None,
        max_val_examples_per_task: int | None = 200,
        mixing: Literal["proportional", "uniform", "temperature"] = "proportional",
        mixing_temperature: float = 2.0,
        val_fraction: float = 0.1,
        prompt_format: Literal["plain", "chat"] = "plain",
        max_length: int = 512,
        batch_size: int = 8,
        group_by_length: bool = False,
        num_workers: int = 0,
        num_proc: int | None = None,
        seed: int = 42,
        cache_dir: str | None = "checkpoints/data_cache",
        tokenizer: str | None = EMBEDDED_MODEL,
        trust_remote_code: bool = False,
        base_cache_dir: str = DEFAULT_BASE_CACHE,
        predict_file: str | None = None,
        eval_examples_per_task: int | None = 100,
        eval_shots: int = 0,
        eval_split: Literal["validation", "test"] = "validation",
    ):
        super().__init__()
        if predict_file is not None and not Path(predict_file).is_file():
            raise UserInputError(f"data.predict_file {predict_file!r} does not exist")
        if not tasks:
            raise UserInputError("data.tasks is empty; name at least one task")
        if eval_shots < 0:
            raise UserInputError(f"data.eval_shots must be 0 or more, got {eval_shots}")
        for name, value in (("max_examples_per_task", max_examples_per_task),
                            ("max_val_examples_per_task", max_val_examples_per_task)):
            if value is not None and value <= 0:
                raise UserInputError(f"data.{name} must be positive or null, got {value}")
        if not 0.0 < val_fraction < 1.0:
            raise UserInputError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if max_length < 8:
            raise UserInputError(f"data.max_length must be at least 8, got {max_length}")
        if mixing not in STRATEGIES:
            raise UserInputError(f"data.mixing must be one of {', '.join(STRATEGIES)}, got {mixing!r}")
        if mixing_temperature <= 0:
            raise UserInputError(f"data.mixing_temperature must be positive, got {mixing_temperature}")
        if prompt_format not in PROMPT_FORMATS:
            raise UserInputError(f"data.prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
        self.save_hyperparameters()
        self.task_specs: list[TaskSpec] = [load_task(t) for t in tasks]
        names = [t.name for t in self.task_specs]
        if len(set(names)) != len(names):
            raise UserInputError(f"data.tasks names a task twice: {names}")
        unknown = set(data_files or {}) - set(names)
        if unknown:
            raise UserInputError(f"data.data_files names task(s) {sorted(unknown)} that are not in data.tasks")
        self.files = {t: normalize_data_files(t, spec) for t, spec in (data_files or {}).items()}
        self.tokenizer: Any = None
        self.train_set: Any = None
        self.val_set: Any = None
        self.stats: dict[str, dict[str, int]] = {}

    # -- Lightning hooks -------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Once per machine: convert a GGUF base, download Hub data, tokenize into the cache."""
        if self.hparams.cache_dir is not None and self.trainer is not None and self.trainer.state.fn == "fit":
            self.load_or_build()

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None):
            if self.train_set is None:
                self.load_or_build()
        elif self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_path(), self.hparams.trust_remote_code)

    # -- building the data -----------------------------------------------------------------

    def load_or_build(self) -> None:
        hp = self.hparams
        self.tokenizer = load_tokenizer(self.tokenizer_path(), hp.trust_remote_code)
        folder = Path(hp.cache_dir) / self.cache_key() if hp.cache_dir is not None else None
        cached = load_cached(folder) if folder is not None else None
        if cached is not None:
            splits, self.stats = cached
            rank_zero_info(f"Tokenized data: cache hit, loaded {folder}")
        else:
            splits = self.build()
            if folder is not None:
                save_cached(folder, splits, self.stats)
                rank_zero_info(f"Tokenized data cached in {folder}")
        self.train_set, self.val_set = splits["train"], splits["validation"]
        for name, s in self.stats.items():
            rank_zero_info(f"Task {name}: {s['train']} train, {s['validation']} validation examples"
                           + (f", {s['dropped_too_long']} dropped as longer than max_length={hp.max_length}"
                              if s["dropped_too_long"] else ""))

    def tokenizer_path(self) -> str:
        """A folder with tokenizer files (an adapter folder too) as it is; else the model's path."""
        name = self.hparams.tokenizer or EMBEDDED_MODEL
        if Path(name, "tokenizer_config.json").is_file():
            return name
        return resolve_model_path(name, self.hparams.base_cache_dir)

    def cache_key(self) -> str:
        hp = self.hparams
        sources = {}
        for task in self.task_specs:
            files = self.files.get(task.name) or (demo_files(task) if hp.source == "demo" else None)
            sources[task.name] = ({s: file_fingerprint(p) for s, p in files.items()} if files is not None
                                  else [task.hub_path, task.hub_name, dict(task.splits)])
        return cache_key({
            "tokenizer": tokenizer_fingerprint(self.tokenizer), "tasks": self.task_specs, "sources": sources,
            **{k: hp[k] for k in ("max_examples_per_task", "max_val_examples_per_task", "mixing", "mixing_temperature",
                                  "val_fraction", "prompt_format", "max_length", "seed")},
        })

    def build(self) -> dict[str, Any]:
        import datasets

        hp = self.hparams
        started = time.perf_counter()
        train_rows, val_rows, origins = {}, {}, {}
        for task in self.task_specs:
            files = self.files.get(task.name)
            origins[task.name] = ", ".join(files.values()) if files else f"{hp.source} data"
            train_rows[task.name], val = self.split_rows(task)
            limit = hp.max_val_examples_per_task
            val_rows[task.name] = val if limit is None or len(val) <= limit else val.select(range(limit))
        counts = mixture_counts({t: len(r) for t, r in train_rows.items()}, hp.mixing,
                                hp.max_examples_per_task, hp.mixing_temperature)
        train_parts, val_parts = [], []
        for task in self.task_specs:
            rows = train_rows[task.name]
            picked = rows.select(take_indices(len(rows), counts[task.name], hp.seed))
            train_part, dropped_train = self.encode(task, picked, origins[task.name])
            val_part, dropped_val = self.encode(task, val_rows[task.name], origins[task.name], VALIDATION_INDEX_BASE)
            train_parts.append(train_part)
            val_parts.append(val_part)
            self.stats[task.name] = {"available": len(rows), "train": len(train_part), "validation": len(val_part),
                                     "dropped_too_long": dropped_train + dropped_val}
        train = datasets.concatenate_datasets(train_parts)
        if len(train) == 0:
            raise UserInputError(f"no training example fits in data.max_length={hp.max_length}; raise it")
        val = datasets.concatenate_datasets(val_parts)
        seconds = time.perf_counter() - started
        total = sum(len(p) for p in train_parts + val_parts)
        rank_zero_info(f"Mix ({hp.mixing}): " + ", ".join(f"{t} {n}" for t, n in counts.items())
                       + f"; tokenized {total} examples in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} examples/s)")
        return {"train": train, "validation": val}

    def split_rows(self, task: TaskSpec, held_out: str = "validation") -> tuple[Any, Any]:
        """(training rows, held-out rows) of a task; without a validation split of its own, the
        held-out rows are ``val_fraction`` of a seeded shuffle of the training rows."""
        hp = self.hparams
        wanted = ("train", "validation", "test") if held_out == "test" else ("train", "validation")
        splits = load_task_splits(task, hp.source, self.files.get(task.name), wanted)
        rows = splits["train"]
        if held_out == "test":
            if "test" not in splits:
                raise UserInputError(f"task {task.name!r} has no test split here; use data.eval_split=validation")
            return rows, splits["test"].shuffle(seed=hp.seed)
        if "validation" in splits:
            return rows, splits["validation"].shuffle(seed=hp.seed)
        shuffled = rows.shuffle(seed=hp.seed)
        held = max(1, int(round(len(rows) * hp.val_fraction)))
        return shuffled.select(range(held, len(rows))), shuffled.select(range(held))

    def eval_examples(self, limit: int | None = None) -> dict[str, list[dict]]:
        """Per task, evaluation examples from the held-out split (``eval_split``)."""
        hp = self.hparams
        out = {}
        for task in self.task_specs:
            train, held = self.split_rows(task, hp.eval_split)
            shot_rows = list(train.shuffle(seed=hp.seed).select(range(min(len(train), 64)))) if hp.eval_shots else []
            out[task.name] = build_eval_examples(task, list(held), limit or hp.eval_examples_per_task, hp.seed,
                                                 hp.eval_shots, shot_rows)
        return out

    def encode(self, task: TaskSpec, rows: Any, origin: str, index_base: int = 0) -> tuple[Any, int]:
        """Template-fill and tokenize one task's rows (batched, ``num_proc`` processes).

        Returns the kept examples (input_ids, labels, task, example_id) and how many were dropped as too long.
        """
        hp, tokenizer = self.hparams, self.tokenizer

        def fill_and_tokenize(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            rows_in_batch = [dict(zip(batch, values)) for values in zip(*batch.values())]
            try:
                pairs = [task.format_random(row, hp.seed, index_base + i) for row, i in zip(rows_in_batch, indices)]
            except TaskError as err:
                raise TaskError(f"{err} (in {origin})") from None
            encoded = encode_pairs(tokenizer, [p for p, _ in pairs], [c for _, c in pairs], hp.max_length,
                                   hp.prompt_format)
            return {"input_ids": [e.input_ids if e else [] for e in encoded],
                    "labels": [e.labels if e else [] for e in encoded],
                    "task": [task.name] * len(encoded),
                    "example_id": [f"{task.name}:{index_base + i}" for i in indices]}

        if len(rows) == 0:
            return rows.select([]), 0
        mapped = rows.map(fill_and_tokenize, batched=True, with_indices=True, remove_columns=rows.column_names,
                          num_proc=hp.num_proc if hp.num_proc and hp.num_proc > 1 else None,
                          keep_in_memory=True, load_from_cache_file=False, desc=f"Tokenizing {task.name}")
        kept = mapped.filter(lambda ids: len(ids) > 0, input_columns="input_ids", keep_in_memory=True,
                             load_from_cache_file=False)
        return kept, len(mapped) - len(kept)

    # -- what the rest of the project reads ------------------------------------------------

    def task_by_name(self, name: str) -> TaskSpec:
        return next(t for t in self.task_specs if t.name == name)

    def task_counts(self, split: str = "train") -> Counter:
        data = self.train_set if split == "train" else self.val_set
        return Counter(data["task"]) if data is not None else Counter()

    def describe(self) -> dict[str, Any]:
        """What an exported adapter records about its data (``training_history.json``)."""
        return {"prompt_format": self.hparams.prompt_format, "mixing": self.hparams.mixing, "data": self.stats}

    def collator(self) -> CausalLMCollator:
        return CausalLMCollator(self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        """Batches in an order fixed by (seed, epoch, rank); a resumed run skips what it already trained on."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        lengths = [len(ids) for ids in self.train_set["input_ids"]] if self.hparams.group_by_length else None
        sampler = ResumableSampler(self.train_set, num_replicas=world, rank=rank, seed=self.hparams.seed,
                                   batch_size=self.hparams.batch_size, batches_done=self.batches_done_this_epoch,
                                   lengths=lengths)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, sampler=sampler,
                          collate_fn=self.collator(), num_workers=self.hparams.num_workers)

    def batches_done_this_epoch(self) -> int:
        """Batches of the current epoch the training loop counts as done when the epoch's iteration
        starts: 0 normally, more when resumed from a mid-epoch checkpoint."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def val_dataloader(self) -> DataLoader:
        if self.trainer is not None and self.trainer.state.fn == "validate":
            return self.test_dataloader()  # standalone validate scores the task metrics too
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, shuffle=False,
                          collate_fn=self.collator(), num_workers=self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:
        """Batches of evaluation examples, each batch from one task (generation budgets differ per task)."""
        size = self.hparams.batch_size
        batches = [examples[i:i + size] for examples in self.eval_examples().values()
                   for i in range(0, len(examples), size)]
        return DataLoader(batches, batch_size=None, shuffle=False, collate_fn=keep_as_is)

    def predict_dataloader(self) -> DataLoader:
        if self.hparams.predict_file is None:
            raise UserInputError("predict needs data.predict_file: a JSON Lines file of {\"prompt\": ...} objects")
        rows = read_prompt_rows(self.hparams.predict_file)
        return DataLoader(rows, batch_size=self.hparams.batch_size, shuffle=False, collate_fn=collate_prompt_rows)


def read_prompt_rows(path: str) -> list[dict]:
    """Prompt rows of a JSON Lines file, each checked to be an object with a string ``prompt``."""
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
                raise UserInputError(f"{path!r} line {number} needs a string \"prompt\"")
            rows.append(row)
    if not rows:
        raise UserInputError(f"{path!r} holds no prompts")
    return rows


def collate_prompt_rows(rows: list[dict]) -> dict[str, list]:
    return {"prompt": [r["prompt"] for r in rows], "rows": rows}


def keep_as_is(batch: Any) -> Any:
    return batch
