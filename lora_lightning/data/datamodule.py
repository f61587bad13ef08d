"""The LightningDataModule: a FLAN-style task mix, formatted with templates and tokenized.

For each task: read its rows (bundled demo, Hub or local files), shuffle them with the seed and
keep at most ``max_examples_per_task`` (the guide's ``-n``), fill one of the task's templates per
example (drawn with a seeded RNG), tokenize with the loss on the completion only, and drop what
cannot fit in ``max_length``. The tasks' training sets are then mixed and shuffled every epoch.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lora_lightning.data.sources import load_task_splits, normalize_data_files
from lora_lightning.data.tasks import TaskSpec, load_task
from lora_lightning.data.tokenization import CausalLMCollator, encode_pairs
from lora_lightning.errors import UserInputError
from lora_lightning.model.loading import DEFAULT_BASE_CACHE, EMBEDDED_MODEL, load_tokenizer, resolve_model_path


class FlanDataModule(LightningDataModule):
    """FLAN-style instruction data: a mix of tasks, each with its ten templates.

    Args:
        tasks: Task names from the registry (bool_q, common_gen, xsum, ...) or paths of task YAML files.
        source: ``demo`` (bundled offline demo mix) or ``hub`` (each task's Hub dataset).
        data_files: Per task, a local file (.jsonl/.json/.csv/.parquet, Hub column names) used as
            its train split, or a mapping ``{train: path, validation: path}``. Overrides ``source``.
        max_examples_per_task: Training examples kept per task (the guide's ``-n``); None keeps all.
        max_val_examples_per_task: Validation examples kept per task; None keeps all.
        val_fraction: Share of the training rows held out for validation when a task has no
            validation split of its own.
        max_length: Longest tokenized example; longer prompts are cut from the start, and examples
            whose completion alone does not fit are dropped (and counted).
        batch_size: Examples per batch and device (global batch = devices x batch_size x accumulate_grad_batches).
        num_workers: DataLoader worker processes.
        seed: Seed for row selection, template choice and validation hold-out.
        tokenizer: Tokenizer source; the CLI links it to ``model.model_name``.
        trust_remote_code: Allow tokenizer code from the model repository (linked to the model's setting).
        base_cache_dir: Cache of converted GGUF models (linked to the model's setting).
    """

    def __init__(
        self,
        tasks: list[str] = ["bool_q", "common_gen", "xsum"],  # noqa: B006 - shown as the CLI default
        source: Literal["demo", "hub"] = "demo",
        data_files: dict[str, str | dict[str, str]] | None = None,
        max_examples_per_task: int | None = None,
        max_val_examples_per_task: int | None = 200,
        val_fraction: float = 0.1,
        max_length: int = 512,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 42,
        tokenizer: str = EMBEDDED_MODEL,
        trust_remote_code: bool = False,
        base_cache_dir: str = DEFAULT_BASE_CACHE,
    ):
        super().__init__()
        if not tasks:
            raise UserInputError("data.tasks is empty; name at least one task")
        for name, value in (("max_examples_per_task", max_examples_per_task),
                            ("max_val_examples_per_task", max_val_examples_per_task)):
            if value is not None and value <= 0:
                raise UserInputError(f"data.{name} must be positive or null, got {value}")
        if not 0.0 < val_fraction < 1.0:
            raise UserInputError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if max_length < 8:
            raise UserInputError(f"data.max_length must be at least 8, got {max_length}")
        self.save_hyperparameters()
        self.task_specs: list[TaskSpec] = [load_task(t) for t in tasks]
        unknown = set(data_files or {}) - {t.name for t in self.task_specs}
        if unknown:
            raise UserInputError(f"data.data_files names task(s) {sorted(unknown)} that are not in data.tasks")
        self.files = {t: normalize_data_files(t, spec) for t, spec in (data_files or {}).items()}
        self.tokenizer: Any = None
        self.train_set: list[dict] | None = None
        self.val_set: list[dict] | None = None
        self.stats: dict[str, dict[str, int]] = {}

    def prepare_data(self) -> None:
        """Once per machine: convert a GGUF base, download Hub data (both cached for setup)."""
        resolve_model_path(self.hparams.tokenizer, self.hparams.base_cache_dir)
        for task in self.task_specs:
            load_task_splits(task, self.hparams.source, self.files.get(task.name))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(resolve_model_path(hp.tokenizer, hp.base_cache_dir), hp.trust_remote_code)
        train, val = [], []
        for task in self.task_specs:
            splits = load_task_splits(task, hp.source, self.files.get(task.name))
            rows = splits["train"].shuffle(seed=hp.seed)
            if "validation" in splits:
                val_rows = splits["validation"].shuffle(seed=hp.seed)
            else:
                held = max(1, int(round(len(rows) * hp.val_fraction)))
                val_rows, rows = rows.select(range(held)), rows.select(range(held, len(rows)))
            rows = cap(rows, hp.max_examples_per_task)
            val_rows = cap(val_rows, hp.max_val_examples_per_task)
            task_train, dropped_train = self.encode(task, rows)
            task_val, dropped_val = self.encode(task, val_rows, index_offset=len(rows))
            train += task_train
            val += task_val
            self.stats[task.name] = {"train": len(task_train), "validation": len(task_val),
                                     "dropped_too_long": dropped_train + dropped_val}
        if not train:
            raise UserInputError(f"no training example fits in data.max_length={hp.max_length}; raise it")
        self.train_set, self.val_set = train, val
        for name, s in self.stats.items():
            rank_zero_info(f"Task {name}: {s['train']} train, {s['validation']} validation examples"
                           + (f", {s['dropped_too_long']} dropped as longer than max_length={hp.max_length}"
                              if s["dropped_too_long"] else ""))

    def encode(self, task: TaskSpec, rows: Any, index_offset: int = 0) -> tuple[list[dict], int]:
        """Template-fill and tokenize one task's rows; returns the examples and how many were dropped."""
        pairs = [task.format_random(row, self.hparams.seed, index_offset + i) for i, row in enumerate(rows)]
        if not pairs:
            return [], 0
        encoded = encode_pairs(self.tokenizer, [p for p, _ in pairs], [c for _, c in pairs], self.hparams.max_length)
        kept = [{"input_ids": e.input_ids, "labels": e.labels, "task": task.name} for e in encoded if e is not None]
        return kept, len(encoded) - len(kept)

    def task_counts(self, split: str = "train") -> Counter:
        data = self.train_set if split == "train" else self.val_set
        return Counter(ex["task"] for ex in data or [])

    def collator(self) -> CausalLMCollator:
        return CausalLMCollator(self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True,
                          collate_fn=self.collator(), num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, shuffle=False,
                          collate_fn=self.collator(), num_workers=self.hparams.num_workers)


def cap(rows: Any, limit: int | None) -> Any:
    return rows if limit is None or len(rows) <= limit else rows.select(range(limit))
