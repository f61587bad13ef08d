"""The LightningDataModule: a FLAN-style task mix, split, templated, tokenized and batched.

It orchestrates: the rows and their three disjoint sets come from :mod:`.pipeline` (train,
selection for the validation loss, evaluation for the results table), the tokenized sets are
cached on disk keyed by everything that shaped them (:mod:`.cache`), and training batches come in
an order fixed by (seed, epoch, rank) that Lightning checkpoints and resumes (:mod:`.sampling`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lora_lightning.data.handoff import DataHandoff
from lora_lightning.data.held_out import HeldOutRows
from lora_lightning.data.pipeline import DataSettings, describe_counts, load_tasks
from lora_lightning.data.prepare import tokenized_sets
from lora_lightning.data.sampling import ResumableLoader, ResumableSampler, int_column
from lora_lightning.data.sources import collate_prompt_rows, read_prompt_rows
from lora_lightning.data.tokenization import CausalLMCollator, PackingCollator
from lora_lightning.errors import UserInputError
from lora_lightning.loading import DEFAULT_BASE_CACHE, EMBEDDED_MODEL, load_tokenizer, tokenizer_source
from lora_lightning.prompts import resolve_prompt_format


class FlanDataModule(HeldOutRows, LightningDataModule):
    """FLAN-style instruction data: a mix of tasks, each with its ten templates.

    Args:
        tasks: Task names from the registry (bool_q, common_gen, xsum, anli, squad, samsum, paws,
            cosmos_qa, ...) or paths of your own task YAML files.
        source: ``demo`` (bundled offline demo mix) or ``hub`` (each task's Hub dataset).
        data_files: Per task, a local file (.jsonl/.json/.csv/.parquet, Hub column names) used as
            its train split, or a mapping ``{train: path, validation: path, test: path}``. Overrides ``source``.
        max_examples_per_task: Per-task cap on training examples (the guide's ``-n``); None: no cap.
        max_val_examples_per_task: Selection (validation-loss) examples kept per task; None keeps all.
            Also caps the selection rows carved out of a task's training rows.
        mixing: ``proportional`` (each task's capped size, FLAN's default), ``uniform`` (equal
            shares) or ``temperature`` (shares proportional to capped size^(1/mixing_temperature)).
        mixing_temperature: The T of ``temperature`` mixing; larger flattens the mix toward small tasks.
        val_fraction: Share of a task's training rows held out (seeded) for each set its source
            lacks: selection when it has no validation split beside a test split, and evaluation too
            when it has neither; capped by the rows used (``max_val_examples_per_task``,
            ``eval_examples_per_task``), so a big set holds out only those.
        prompt_format: ``auto`` (the tokenizer's chat template when it has one, else plain), ``plain``
            FLAN text, or ``chat`` (prompt as user turn, completion as assistant turn, loss on it only).
        max_length: Longest tokenized example; longer prompts are cut from the start (leading special
            tokens kept), and examples whose completion alone does not fit are dropped (and counted).
        batch_size: Examples per batch and device (global batch = devices x batch_size x accumulate_grad_batches).
        group_by_length: Batch examples of similar length together (less padding, faster); batches
            stay in a seeded random order.
        packing: Pack each batch's examples into as few rows of ``max_length`` as fit (training and
            validation loss: same examples per step, same loss, less padding); each attends only to itself.
        num_workers: DataLoader worker processes.
        num_proc: Processes for tokenization; None: ``min(cores, 8)`` for a task of at least 50,000
            rows to tokenize (enough to pay back starting them), else one.
        seed: Seed for row selection, template choice and the held-out slices.
        cache_dir: Where tokenized datasets are cached (None: no cache).
        tokenizer: Tokenizer source; the CLI links it to ``model.adapter`` or else ``model.model_name``.
        trust_remote_code: Allow tokenizer code from the model repository (linked to the model's setting).
        base_cache_dir: Cache of converted GGUF models (linked to the model's setting).
        predict_file: ``predict``: a JSON Lines file, one object per prompt with a ``prompt`` key
            (other keys are passed through to the output).
        eval_examples_per_task: ``test`` / ``validate``: evaluation examples scored per task (None: all);
            caps the evaluation rows carved out of training rows (``test`` may pass fewer, not more).
        eval_shots: ``test`` / ``validate``: training examples prepended to each prompt (0: zero-shot).
        eval_tasks: Tasks scored by ``test`` / ``validate`` but never trained on (FLAN's held-out tasks:
            does tuning on ``tasks`` help on tasks it never saw?); their evaluation rows are chosen
            as for any task, and the results table and TensorBoard keep them apart (``*_unseen``).
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
        prompt_format: Literal["auto", "plain", "chat"] = "auto",
        max_length: int = 512,
        batch_size: int = 8,
        group_by_length: bool = False,
        packing: bool = True,
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
        eval_tasks: list[str] = [],  # noqa: B006 - shown as the CLI default
    ):
        super().__init__()
        self.save_hyperparameters()
        self.settings = DataSettings.from_mapping(self.hparams)
        if batch_size <= 0 or num_workers < 0:
            raise UserInputError(f"data.batch_size must be positive and data.num_workers 0 or more, got {batch_size}")
        if predict_file is not None and not Path(predict_file).is_file():
            raise UserInputError(f"data.predict_file {predict_file!r} does not exist")
        self.task_specs, self.unseen_specs, self.files = load_tasks(tasks, data_files or {}, eval_tasks)
        self.tokenizer: Any = None
        self.prompt_format: str | None = None  # resolved (plain or chat) once the tokenizer is loaded
        self.train_set: Any = None
        self.val_set: Any = None
        self.train_loader: ResumableLoader | None = None
        self.resume_position: dict[str, int] | None = None
        self.stats: dict[str, dict[str, Any]] = {}

    # -- Lightning hooks -------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Once per machine: convert a GGUF base, download Hub data, tokenize into the cache."""
        if self.hparams.cache_dir is not None and self.trainer is not None and self.trainer.state.fn == "fit":
            self.load_or_build()

    def setup(self, stage: str | None = None) -> None:
        self.load_tokenizer()
        if stage in ("fit", None) and self.train_set is None:
            self.load_or_build()

    # -- the data --------------------------------------------------------------------------

    def load_tokenizer(self) -> None:
        """The tokenizer, and the prompt format resolved for it (logged once)."""
        hp = self.hparams
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(tokenizer_source(hp.tokenizer, hp.base_cache_dir), hp.trust_remote_code)
            self.prompt_format = resolve_prompt_format(hp.prompt_format, self.tokenizer, hp.tokenizer)
            rank_zero_info(f"Prompt format: {self.prompt_format} (data.prompt_format={self.hparams.prompt_format})")

    def handoff(self) -> DataHandoff:
        """What the model takes from this data (:meth:`LoRAModule.connect`): the tokenizer the rows were
        tokenized with, the prompt format they were laid out in, and ``max_length``."""
        self.load_tokenizer()
        source = tokenizer_source(self.hparams.tokenizer, self.hparams.base_cache_dir)
        return DataHandoff(self.tokenizer, source, self.prompt_format, self.hparams.max_length)

    def load_or_build(self) -> None:
        self.load_tokenizer()
        hp = self.hparams
        splits, self.stats = tokenized_sets(
            self.tokenizer, self.task_specs, self.files, self.settings, self.prompt_format, hp.cache_dir
        )
        self.train_set, self.val_set = splits["train"], splits["validation"]
        for line in describe_counts(self.stats, hp.max_length):
            rank_zero_info(line)

    # -- dataloaders -----------------------------------------------------------------------

    def collator(self) -> CausalLMCollator:
        pad, hp = self.tokenizer.pad_token_id, self.hparams
        return PackingCollator(pad, hp.max_length) if hp.packing else CausalLMCollator(pad)

    def train_dataloader(self) -> DataLoader:
        """Batches in an order fixed by (seed, epoch, rank); Lightning checkpoints the position."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        lengths = int_column(self.train_set, "length") if self.hparams.group_by_length else None
        hp, accumulate = self.hparams, trainer.accumulate_grad_batches if trainer is not None else 1
        sampler = ResumableSampler(self.train_set, world, rank, hp.seed, hp.batch_size, lengths)
        self.train_loader = ResumableLoader(
            self.train_set,
            batch_size=hp.batch_size,
            sampler=sampler,
            accumulate=accumulate,
            epoch_batches=(lambda: trainer.num_training_batches) if trainer is not None else None,
            collate_fn=self.collator(),
            num_workers=hp.num_workers,
        )
        if self.resume_position is not None:
            self.train_loader.load_state_dict(self.resume_position)
        return self.train_loader

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position, also restored here because Lightning may build the train
        loader (``estimated_stepping_batches``) before it hands the loader its own saved state."""
        return {"train_position": self.train_loader.state_dict()} if self.train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resume_position = state_dict.get("train_position")

    def val_dataloader(self) -> DataLoader:
        if self.trainer is not None and self.trainer.state.fn == "validate":
            return self.test_dataloader()  # standalone validate scores the task metrics too
        hp = self.hparams
        return DataLoader(
            self.val_set, batch_size=hp.batch_size, collate_fn=self.collator(), num_workers=hp.num_workers
        )

    def test_dataloader(self) -> DataLoader:
        """Batches of evaluation examples, each batch from one task (generation budgets differ per task)."""
        size = self.hparams.batch_size
        batches = [part[i : i + size] for part in self.eval_examples().values() for i in range(0, len(part), size)]
        return DataLoader(batches, batch_size=None, collate_fn=keep_as_is)

    def predict_dataloader(self) -> DataLoader:
        if self.hparams.predict_file is None:
            raise UserInputError('predict needs data.predict_file: a JSON Lines file of {"prompt": ...} objects')
        rows = read_prompt_rows(self.hparams.predict_file)
        return DataLoader(rows, batch_size=self.hparams.batch_size, collate_fn=collate_prompt_rows)


def keep_as_is(batch: Any) -> Any:
    return batch
