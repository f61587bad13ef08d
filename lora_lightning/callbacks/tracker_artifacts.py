"""Experiment trackers beside TensorBoard: the files a run writes, logged to MLflow and W&B.

Metrics reach every logger through ``self.log``; the run's settings through Lightning's hparams record and
:class:`~lora_lightning.callbacks.RunSummary`. What is not a number is this callback's: after ``fit`` the
adapter folders (``adapter/`` and ``adapter_last/``, or ``model/`` and ``model_last/``), after ``test``
or ``validate`` the results table (``eval_results.md`` and ``.csv``), for each tracker among the
trainer's loggers (``configs/mlflow.yaml``, ``configs/wandb.yaml``): MLflow run artifacts, W&B run files
(copied into the run's ``files/`` folder, uploaded by ``wandb sync`` when offline). Without a tracker it
does nothing. It runs in ``teardown``, after every callback's ``on_fit_end`` / ``on_test_end`` wrote its
files and before the loggers close the run, and only when the stage ended well.

Also here, for the CLI: :func:`finish_trackers` (the W&B run ends with the command),
:func:`check_tracker_packages` (a tracker overlay without its package is one
line naming the extra) and :func:`tensorboard_first` (an overlay's logger list keeps TensorBoard, first:
``trainer.log_dir`` is its folder, which ``compare``, the results' ``hp/test`` metrics and the tests read).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from lora_lightning.callbacks.adapter_checkpoint import AdapterCheckpoint
from lora_lightning.callbacks.evaluation_report import EvaluationReport
from lora_lightning.errors import UserInputError

# logger class name -> (the package it needs, also the name of the extra that installs it; the overlay that adds it)
TRACKERS = {"MLFlowLogger": ("mlflow", "configs/mlflow.yaml"), "WandbLogger": ("wandb", "configs/wandb.yaml")}


def check_tracker_packages(class_paths: Iterable[str]) -> None:
    """Raises :class:`UserInputError` (one line) for the first tracker logger whose package is not
    installed, before anything is built. The extras are named as the packages are."""
    for class_path in class_paths:
        name = str(class_path).rsplit(".", 1)[-1]
        if name in TRACKERS:
            package, overlay = TRACKERS[name]
            if importlib.util.find_spec(package) is None:
                raise UserInputError(
                    f"trainer.logger {name} ({overlay}) needs the {package} package: "
                    f"pip install 'lora-lightning[{package}]'"
                )


def logger_class_paths(logger: Any) -> list[str]:
    """The class paths of a parsed ``trainer.logger`` value (one logger, a list of them, or a bool/None)."""
    items = logger if isinstance(logger, list | tuple) else [logger]
    paths = []
    for item in items:
        path = item.get("class_path") if hasattr(item, "get") else getattr(item, "class_path", None)
        if path:
            paths.append(str(path))
    return paths


def tensorboard_first(trainer: Trainer) -> None:
    """With loggers configured but no TensorBoardLogger among them (an overlay appended a tracker to
    Lightning's default, which a logger list replaces), Lightning's default TensorBoardLogger is put
    back in front; one given elsewhere in the list is moved to the front."""
    loggers = list(trainer.loggers)
    if not loggers or isinstance(loggers[0], TensorBoardLogger):
        return
    boards = [lg for lg in loggers if isinstance(lg, TensorBoardLogger)]
    if not boards:
        boards = [TensorBoardLogger(save_dir=trainer.default_root_dir, version=SLURMEnvironment.job_id())]
    trainer.loggers = boards[:1] + [lg for lg in loggers if lg is not boards[0]]


def trackers(loggers: Iterable[Logger]) -> list[Logger]:
    return [lg for lg in loggers if isinstance(lg, MLFlowLogger | WandbLogger)]


class TrackerArtifacts(Callback):
    """Logs the adapter folders (after ``fit``) and the results table (after ``test``/``validate``) to
    each MLflow or W&B logger of the trainer; nothing without one."""

    def __init__(self) -> None:
        self.logged: list[Path] = []

    def teardown(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        targets = trackers(trainer.loggers)
        if not targets or not trainer.is_global_zero:
            return
        paths = self.outputs(trainer, pl_module, stage)
        for logger in targets:
            for path in paths:
                log_artifact(logger, path)
        self.logged = paths
        if paths:
            names = ", ".join(p.name for p in paths)
            rank_zero_info(f"Logged {names} to {', '.join(type(lg).__name__ for lg in targets)}")

    @staticmethod
    def outputs(trainer: Trainer, pl_module: Any, stage: str) -> list[Path]:
        found: list[Path] = []
        for callback in trainer.callbacks:
            if stage == "fit" and isinstance(callback, AdapterCheckpoint):
                found += [callback.folder(trainer, pl_module, which) for which in ("best", "last")]
            elif stage in ("test", "validate") and isinstance(callback, EvaluationReport):
                found += callback.written
        return [p for p in dict.fromkeys(found) if p.exists()]


def finish_trackers(trainer: Trainer | None) -> None:
    """Ends the W&B run of the trainer's WandbLogger, once the command's work is done (Lightning leaves it
    open for a next ``fit``/``test`` in the same script): its summary and config files get written, and a
    next Trainer in the process (a sweep's next trial) starts a run of its own instead of reusing it."""
    for logger in trainer.loggers if trainer is not None else []:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


def log_artifact(logger: Logger, path: Path) -> None:
    """A file or a folder (as a folder of its name) to the logger's run."""
    if isinstance(logger, MLFlowLogger):
        client, run_id = logger.experiment, logger.run_id
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        else:
            client.log_artifact(run_id, str(path))
    elif isinstance(logger, WandbLogger):
        # Copies in the run's files folder (what `wandb sync` uploads): wandb.save would link to the
        # originals, which the next export of the same folder replaces.
        run = logger.experiment
        files = Path(run.dir)
        copy = files / path.name
        if path.is_dir():
            shutil.copytree(path, copy, dirs_exist_ok=True)
            saved = [f for f in copy.rglob("*") if f.is_file()]
        else:
            shutil.copy2(path, copy)
            saved = [copy]
        for file in saved:
            run.save(str(file), base_path=str(files), policy="now")
