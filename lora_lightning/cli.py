"""``lora-lightning``: LightningCLI over LoRAModule and FlanDataModule, plus ``generate``.

    lora-lightning fit --config configs/default.yaml [--model.lora_r 8 --data.max_examples_per_task 500 ...]
    lora-lightning fit --config configs/default.yaml --ckpt_path last        # resume
    lora-lightning test --config configs/default.yaml --model.adapter checkpoints/default/adapter   # base vs adapter
    lora-lightning predict --config configs/default.yaml --model.adapter checkpoints/default/adapter \
        --data.predict_file prompts.jsonl [--predictions.output out.jsonl]
    lora-lightning generate --adapter checkpoints/default/adapter --prompt "..."
    lora-lightning merge --adapter checkpoints/default/adapter --output merged/
    lora-lightning export-gguf --adapter checkpoints/default/adapter [--output adapter.gguf]   # llama.cpp / Ollama
    lora-lightning lm-eval-tasks harness_tasks/ --config configs/default.yaml   # tasks for lm_eval --include_path
    lora-lightning sweep --space sweep.yaml --n_trials 20 --output sweeps/lr_rank --config configs/default.yaml

Every run writes under ``trainer.default_root_dir`` (``checkpoints/<run>``): ``adapter/`` (best
validation loss) and ``adapter_last/`` in peft format, ``ckpt/`` (Lightning checkpoints holding only
trainable weights and optimizer state) and ``lightning_logs/`` (TensorBoard).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lora_lightning.atomic_write import check_writable_folder
from lora_lightning.callbacks import (
    AdapterCheckpoint,
    EarlyStop,
    EvaluationReport,
    GenerationSamples,
    JsonlPredictionWriter,
    LastCheckpoint,
    RunSummary,
    TaskCurves,
    ThroughputLogger,
    TrackerArtifacts,
)
from lora_lightning.callbacks.tracker_artifacts import (
    check_tracker_packages,
    finish_trackers,
    logger_class_paths,
    tensorboard_first,
)
from lora_lightning.checkpoint_io import read_checkpoint
from lora_lightning.commands import COMMANDS, run_command
from lora_lightning.data import FlanDataModule
from lora_lightning.errors import TrainingHalted, UserInputError, first_line
from lora_lightning.evaluation.harness import GROUP, write_harness_tasks
from lora_lightning.model import LoRAModule
from lora_lightning.sweep import sweep_command

PROG = "lora-lightning"


class OneLineErrorParser(LightningArgumentParser):
    """Argument errors (unknown key, wrong type) as one line and exit status 2, without the usage dump."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            return super().error(message, ex)
        fail(f"{' '.join(message.split())} (see `{PROG} <command> --help`)")


class LoRALightningCLI(LightningCLI):
    """The Lightning CLI with the run layout under ``trainer.default_root_dir`` wired in."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(AdapterCheckpoint, "adapter_export")
        parser.add_lightning_class_args(JsonlPredictionWriter, "predictions")
        parser.add_lightning_class_args(GenerationSamples, "samples")
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(ThroughputLogger, "throughput")
        parser.add_lightning_class_args(EvaluationReport, "eval_report")
        parser.add_lightning_class_args(TaskCurves, "task_curves")
        parser.add_lightning_class_args(RunSummary, "run_summary")
        parser.add_lightning_class_args(EarlyStop, "early_stopping")
        parser.add_lightning_class_args(TrackerArtifacts, "tracker_artifacts")
        parser.set_defaults(
            {
                "trainer.default_root_dir": "checkpoints/default",
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": False,  # last.ckpt is last_checkpoint's
                "checkpoint.filename": "best-{step}",
            }
        )
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=ckpt_dir)
        parser.link_arguments("trainer.default_root_dir", "last_checkpoint.dirpath", compute_fn=ckpt_dir)
        parser.link_arguments("trainer.default_root_dir", "adapter_export.dirpath")
        for key in ("trust_remote_code", "base_cache_dir"):
            parser.link_arguments(f"model.{key}", f"data.{key}")
        parser.link_arguments(("model.adapter", "model.model_name"), "data.tokenizer", compute_fn=tokenizer_source)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parses, then checks a checkpoint file given to resume from, before Lightning reads its
        hyperparameters: a truncated, corrupt or code-carrying file is a one-line error and nothing gets built."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = (self.config.get(subcommand) if subcommand else self.config).get("ckpt_path")
        if path and path not in ("last", "best", "hpc", "registry"):
            read_checkpoint(path)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if "weights_only" in config and config["weights_only"] is None:
            config["weights_only"] = True  # checkpoints are tensors and plain values: never unpickle code
        check_tracker_packages(logger_class_paths(config.get("trainer", {}).get("logger")))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with TensorBoard first among its loggers when an overlay appended a tracker
        (configs/mlflow.yaml, configs/wandb.yaml): its event files are what the project reads back."""
        trainer = super().instantiate_trainer(**kwargs)
        tensorboard_first(trainer)
        return trainer


def ckpt_dir(root: str | None) -> str:
    return os.path.join(root or ".", "ckpt")


def tokenizer_source(adapter: str | None, model_name: str | None) -> str | None:
    """An adapter folder carries the tokenizer it was trained with; else the base model's."""
    return adapter or model_name


def fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


def quiet_dependency_noise() -> None:
    """Silences, each at its source, what a run would print that the user cannot act on:

    - torch's ``FutureWarning`` that ``LeafSpec`` is deprecated, raised by Lightning's own
      ``lightning.pytorch.utilities._pytree`` (its CombinedLoader) on every fit, not by our code;
    - Lightning's advertisement for its cloud logger, logged once per Trainer;
    - Lightning's warning that ``args`` was given while ``sys.argv`` has arguments: ``lm-eval-tasks`` and
      ``sweep`` build the CLI from the arguments they did not take, on purpose.

    Lightning's model summary (a table whose FLOPs column reads 0 without an ``example_input_array``,
    and a note that bf16 sizes are estimated as 32-bit) is off instead (``trainer.enable_model_summary``):
    the module prints its own line of trainable / total parameters and their dtypes.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within Python")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(not_an_advert)


def not_an_advert(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")


def build_cli(args: list[str] | None, run: bool = True, callbacks: Sequence[Callback] = ()) -> LoRALightningCLI:
    """The CLI over ``args`` (``None``: ``sys.argv``); ``run`` runs its subcommand. ``callbacks`` are added
    to the Trainer's (a sweep's pruning)."""
    quiet_dependency_noise()
    return LoRALightningCLI(
        LoRAModule,
        FlanDataModule,
        parser_class=OneLineErrorParser,
        seed_everything_default=42,
        trainer_defaults={
            "plugins": [{"class_path": "lora_lightning.checkpoint_io.AtomicCheckpointIO"}],
            "enable_model_summary": False,  # the module prints its own parameter counts (quiet_dependency_noise)
            **({"callbacks": list(callbacks)} if callbacks else {}),
        },
        auto_configure_optimizers=False,
        args=args,
        run=run,
        parser_kwargs={
            "prog": PROG if run else f"{PROG} lm-eval-tasks OUT_DIR",
            "description": "LoRA instruction tuning on PyTorch Lightning. "
            "Subcommands: fit, validate, test, predict, generate, merge, export-gguf, compare, lm-eval-tasks, sweep.",
        },
    )


class ParseOnlyCLI(LoRALightningCLI):
    """The CLI's parse (configs composed, keys and types checked, links applied), nothing built."""

    def instantiate_classes(self) -> None:
        pass


def parse_config(args: list[str]) -> Namespace:
    """The config ``fit ARGS`` would run (``args`` without the subcommand), parsed and checked but not
    instantiated: no model or data is loaded. A bad key or value is a :class:`UserInputError` (one line)."""
    quiet_dependency_noise()
    try:
        cli = ParseOnlyCLI(
            LoRAModule,
            FlanDataModule,
            parser_class=OneLineErrorParser,
            seed_everything_default=42,
            auto_configure_optimizers=False,
            args=args,
            run=False,
            parser_kwargs={"prog": PROG, "exit_on_error": False},
        )
    except ArgumentError as err:
        raise UserInputError(" ".join(str(err).split())) from None
    return cli.config


def run_in_process(subcommand: str, args: list[str], callbacks: list[Callback]) -> Trainer:
    """``lora-lightning SUBCOMMAND ARGS`` in this process (a sweep's trial): the Trainer that ran, its
    W&B run (if any) finished so that the next Trainer starts its own."""
    trainer = build_cli([subcommand, *args], callbacks=callbacks).trainer
    finish_trackers(trainer)
    return trainer


def lm_eval_tasks(argv: list[str]) -> None:
    """``lora-lightning lm-eval-tasks OUT_DIR [--overwrite] [--config ...] [--data.* ...]``: the run's
    tasks over its evaluation rows as lm-evaluation-harness tasks (:mod:`lora_lightning.evaluation.harness`),
    read from the same config (and ``--model.adapter``, for its tokenizer and prompt format, and whose
    recorded splits are checked as ``test`` checks them) as ``test``.
    OUT_DIR is checked before anything is loaded: a non-empty folder this project did not write is
    refused unless ``--overwrite``; the current directory, its ancestors and a checkout always."""
    if not argv or argv[0].startswith("-"):
        fail("usage: lm-eval-tasks OUT_DIR [--overwrite] [--config FILE ...] [--model.adapter DIR] [--data.KEY V ...]")
    out, (overwrite, rest) = argv[0], overwrite_flag(argv[1:])
    check_writable_folder(Path(out).resolve(), overwrite)
    cli = build_cli(rest, run=False)
    data = cli.datamodule
    data.load_tokenizer()
    if cli.model.hparams.adapter:
        data.check_adapter_splits(cli.model.hparams.adapter)  # the rows exported are the adapter's held-out ones
    names = write_harness_tasks(out, data.eval_examples(), data.tokenizer, data.prompt_format, overwrite)
    print(f"Wrote {len(names)} lm-evaluation-harness tasks to {out} ({', '.join(names)}); score a model with:")
    print(
        "  lm_eval --model hf --model_args pretrained=BASE[,peft=ADAPTER],add_bos_token=False,"
        f"max_length={data.hparams.max_length - 1} \\"
    )
    print(f"    --include_path {out} --tasks {GROUP}")


def overwrite_flag(argv: list[str]) -> tuple[bool, list[str]]:
    """``--overwrite`` (alone, or ``--overwrite true|false`` as ``merge`` takes it) taken out of
    ``argv``: whether it is on, and the remaining arguments."""
    if "--overwrite" not in argv:
        return False, argv
    at = argv.index("--overwrite")
    value = argv[at + 1].lower() if at + 1 < len(argv) and argv[at + 1].lower() in ("true", "false") else None
    return value != "false", argv[:at] + argv[at + (2 if value else 1) :]


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lora-lightning`` and ``python -m lora_lightning``."""
    words = sys.argv[1:] if argv is None else argv
    try:
        if words and words[0] in COMMANDS:
            run_command(words[0], words[1:], PROG)
            return
        if words and words[0] == "lm-eval-tasks":
            lm_eval_tasks(words[1:])
            return
        if words and words[0] == "sweep":
            sweep_command(words[1:], PROG, run_in_process, parse_config)
            return
        finish_trackers(build_cli(argv).trainer)  # None: sys.argv
    except UserInputError as err:
        fail(str(err))
    except TrainingHalted as err:
        print(f"{PROG}: stopped: {err}", file=sys.stderr)
        sys.exit(1)
    except SIGTERMException:
        # Lightning exits 0 on SIGTERM; a preempted run did not finish, so say so (128 + SIGTERM).
        print(
            f"{PROG}: stopped by SIGTERM; last.ckpt holds the last step, resume with --ckpt_path last", file=sys.stderr
        )
        sys.exit(143)
    except FileNotFoundError as err:
        fail(first_line(err))


if __name__ == "__main__":
    main()
