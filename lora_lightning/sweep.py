"""``lora-lightning sweep``: an Optuna study over config keys, each trial an ordinary ``fit`` run.

The search space is YAML (:func:`parse_space`); the study lives in ``<output>/study.db`` (SQLite), so a
sweep stopped in any way, ``kill -9`` included, goes on where it was when the same command is run again:
finished trials are kept, a trial left running by a dead process is marked failed and its parameters
are tried again (:func:`recover`), and trials are added until ``n_trials`` have ended. Each trial is a
``fit`` (then a ``test`` of its adapter for a ``test/...`` objective) run in this process through the
CLI, with a fresh Trainer and the config's seed, into ``<output>/trial_<n>/``. After each trial
``<output>/trials.md`` (the table of trials) and ``<output>/best.yaml`` (the best trial's settings, an
overlay for ``fit --config configs/default.yaml --config <output>/best.yaml``) are rewritten.

The CLI (:mod:`lora_lightning.cli`) hands in how to parse a config and run a subcommand, so this module
sits below it (the import layers of setup.cfg) and owns everything else: the space, the study, the
pruning callback, the table and the overlay.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import importlib.util
import inspect
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lora_lightning.atomic_write import atomic_file, protected_reason, read_manifest
from lora_lightning.callbacks import RunSummary
from lora_lightning.data.tasks import load_task
from lora_lightning.errors import TrainingHalted, UserInputError, first_line
from lora_lightning.metrics import column_metric, task_columns

STUDY = "lora-lightning-sweep"
RECORD = "sweep.json"  # the sweep's settings; its presence in the folder's manifest makes the folder a sweep's
RANGE_KEYS = ("low", "high", "log", "step")
SCALARS = (str, int, float, bool, type(None))
LOCK = ".sweep.lock"  # held (flock) by the sweep process running in the folder

# -- the search space --------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One searched config key: ``choices`` (a list in the YAML), or a ``low``..``high`` range."""

    key: str
    choices: tuple | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    integer: bool = False

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def ends(self) -> tuple[Any, Any]:
        """The first and last value the key can take: what the space is checked with before any trial."""
        return (self.choices[0], self.choices[-1]) if self.choices is not None else (self.low, self.high)

    def describe(self) -> str:
        if self.choices is not None:
            return "[" + ", ".join(str(c) for c in self.choices) + "]"
        return f"{self.low}..{self.high}{' log' if self.log else ''}{f' step {self.step}' if self.step else ''}"


def number(key: str, name: str, value: Any) -> float | int:
    """A range bound or step: a number, or a string YAML left as one (``1e-4`` is a string in YAML 1.1)."""
    if isinstance(value, bool) or value is None:
        raise UserInputError(f"sweep space {key}: {name} must be a number, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise UserInputError(f"sweep space {key}: {name} must be a finite number, got {value!r}")
        return value
    try:
        parsed = float(str(value))
    except ValueError:
        raise UserInputError(f"sweep space {key}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(parsed):
        raise UserInputError(f"sweep space {key}: {name} must be a finite number, got {value!r}")
    return parsed


def parse_param(key: str, spec: Any) -> Param:
    expected = "a list of values to try, or {low: L, high: H} with optional log: true and step: S"
    if isinstance(spec, list):
        if not spec:
            raise UserInputError(f"sweep space {key}: the list of values is empty; give {expected}")
        bad = [v for v in spec if not isinstance(v, SCALARS)]
        if bad:
            raise UserInputError(
                f"sweep space {key}: each value must be a number, string, true/false or null, got {bad[0]!r}"
            )
        if len(set(map(repr, spec))) < len(spec):
            raise UserInputError(f"sweep space {key}: the list {spec} repeats a value")
        return Param(key, choices=tuple(spec))
    if not isinstance(spec, dict):
        raise UserInputError(f"sweep space {key}: give {expected}; got {spec!r}")
    unknown = [k for k in spec if k not in RANGE_KEYS]
    if unknown:
        raise UserInputError(f"sweep space {key}: unknown range key {unknown[0]!r} (expected low, high, log, step)")
    if "low" not in spec or "high" not in spec:
        raise UserInputError(f"sweep space {key}: a range needs both low and high")
    low, high = number(key, "low", spec["low"]), number(key, "high", spec["high"])
    step = number(key, "step", spec["step"]) if spec.get("step") is not None else None
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserInputError(f"sweep space {key}: log must be true or false, got {log!r}")
    if not low < high:
        raise UserInputError(f"sweep space {key}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise UserInputError(f"sweep space {key}: a log range needs low above 0, got {low}")
    if step is not None and step <= 0:
        raise UserInputError(f"sweep space {key}: step must be above 0, got {step}")
    if log and step is not None:
        raise UserInputError(f"sweep space {key}: give log or step, not both")
    integer = all(isinstance(v, int) for v in (spec["low"], spec["high"])) and (step is None or isinstance(step, int))
    return Param(key, low=low, high=high, log=log, step=step, integer=integer)


def parse_space(raw: Any, prefix: str = "") -> list[Param]:
    """Config keys to values: flat (``model.learning_rate: {low: 1e-4, high: 3e-3, log: true}``) or
    nested (``model: {lora_r: [8, 16, 32]}``). A list is the values to try (Optuna's categorical);
    a mapping with ``low`` and ``high`` a range (integers when both are, floats otherwise; ``log: true``
    samples on a log scale, ``step`` on a grid). Any other shape is one line naming the key."""
    if not isinstance(raw, dict) or not raw:
        where = prefix[:-1] or "the sweep space"
        raise UserInputError(
            f"{where} must be a mapping of config keys to a list or a range, "
            "e.g. model.learning_rate: {low: 1e-4, high: 3e-3, log: true} or model.lora_r: [8, 16, 32]"
        )
    params = []
    for name, spec in raw.items():
        if not isinstance(name, str) or not name.strip() or " " in name:
            raise UserInputError(f"sweep space: {name!r} is not a config key (e.g. model.lora_r)")
        key = prefix + name
        if isinstance(spec, dict) and not ({"low", "high"} & set(spec)):
            params += parse_space(spec, f"{key}.")
        else:
            params.append(parse_param(key, spec))
    return params


def read_space(path: str) -> list[Param]:
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"sweep space file {path!r} does not exist; give a YAML file of config keys to search")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserInputError(f"sweep space file {path!r} is not valid YAML: {first_line(err)}") from None
    return parse_space(raw)


def value_arg(value: Any) -> str:
    """A value as a command-line argument of the CLI."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


def overlay(params: dict[str, Any]) -> dict:
    """Flat dotted keys as the nested mapping of a config file."""
    nested: dict = {}
    for key, value in params.items():
        *parents, leaf = key.split(".")
        level = nested
        for part in parents:
            level = level.setdefault(part, {})
        level[leaf] = value
    return nested


# -- pruning -----------------------------------------------------------------------------------


class TrialPruning(Callback):
    """Reports the validation loss to the Optuna trial at each validation (step = optimizer step) and
    stops the run, as early stopping does, when the pruner says so: the trial's folder keeps its
    adapter and logs. The sweep then records the trial as pruned."""

    def __init__(self, trial: Any, monitor: str = "val/loss") -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if not math.isfinite(value):
            return
        self.trial.report(value, step=trainer.global_step)
        if self.trial.should_prune():
            self.pruned_at = trainer.global_step
            trainer.should_stop = True


# -- the study ---------------------------------------------------------------------------------


def states():
    from optuna.trial import TrialState

    return TrialState


def ended(study: Any) -> list[Any]:
    """Trials that ran to an end: complete, pruned, or halted by a non-finite loss (a result too, for a
    learning rate). Failed otherwise (a killed process, an error) they do not count."""
    s = states()
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (s.COMPLETE, s.PRUNED) or (t.state == s.FAIL and "halted" in t.user_attrs)
    ]


def retry(study: Any, trial: Any) -> None:
    """A trial a dead or interrupted process left running: its parameters queued again, then it is
    marked failed (in this order: a kill in between queues twice, never loses them)."""
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number}, skip_if_exists=False)
    study.tell(trial.number, state=states().FAIL)


def recover(study: Any) -> list[int]:
    """Every trial still RUNNING in the study when a sweep starts was left by a dead process (one
    sweep process per folder holds its lock): each is failed and its parameters queued again."""
    running = study.get_trials(deepcopy=False, states=(states().RUNNING,))
    for trial in running:
        retry(study, trial)
    return [t.number for t in running]


# -- the table and the overlay -----------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def trial_state(trial: Any, retried: dict[int, int]) -> str:
    s = states()
    if trial.state == s.COMPLETE:
        return "complete"
    if trial.state == s.PRUNED:
        return f"pruned at step {trial.user_attrs.get('pruned_at', '?')}"
    if trial.state == s.FAIL:
        if "halted" in trial.user_attrs:
            return "halted (non-finite loss)"
        if trial.number in retried:
            return f"stopped; re-run as trial {retried[trial.number]}"
        return "failed"
    return trial.state.name.lower()


def trials_table(study: Any, settings: SweepSettings) -> str:
    trials = study.get_trials(deepcopy=False)
    keys = [p.key for p in settings.params]
    retried = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    best = best_trial(study)
    extra = [] if settings.objective == "val_loss" else ["best val_loss"]
    header = ["trial", "state", settings.objective, *extra, "best step", *keys, "minutes"]
    lines = [
        f"Sweep {settings.output}: {len(ended(study))} of {settings.n_trials} trials ended, objective "
        f"{settings.objective} ({settings.direction}); best: "
        + (f"trial {best.number}, {fmt(best.value)} (best.yaml)" if best else "none yet"),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for t in trials:
        value = t.value if t.state == states().COMPLETE else None
        seconds = t.user_attrs.get("seconds")
        row = [
            f"**{t.number}**" if best is not None and t.number == best.number else str(t.number),
            trial_state(t, retried),
            fmt(value),
            *([fmt(t.user_attrs.get("best_val_loss"))] if extra else []),
            fmt(t.user_attrs.get("best_step")),
            *[fmt(t.params.get(k)) for k in keys],
            f"{seconds / 60:.1f}" if seconds is not None else "",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def best_trial(study: Any) -> Any:
    complete = study.get_trials(deepcopy=False, states=(states().COMPLETE,))
    if not complete:
        return None
    pick = min if study.direction.name == "MINIMIZE" else max
    return pick(complete, key=lambda t: (t.value, -t.number) if pick is max else (t.value, t.number))


def best_overlay(study: Any, settings: SweepSettings) -> str | None:
    best = best_trial(study)
    if best is None:
        return None
    command = shlex.join(["lora-lightning", "fit", *settings.fit_args, "--config", f"{settings.output}/best.yaml"])
    head = (
        f"# The best trial of `lora-lightning sweep` in {settings.output}: trial {best.number}, "
        f"{settings.objective} {best.value:.6g} ({settings.direction}), of {len(ended(study))} trials ended.\n"
        f"# Its run, with the sweep's other arguments (give a --trainer.default_root_dir of its own):\n"
        f"#   {command}\n"
    )
    values = {p.key: best.params[p.key] for p in settings.params if p.key in best.params}
    return head + yaml.safe_dump(overlay(values), sort_keys=False)


def write_outputs(study: Any, settings: SweepSettings) -> str:
    out = Path(settings.output)
    table = trials_table(study, settings)
    with atomic_file(out / "trials.md", record=True) as f:
        f.write(table)
    best = best_overlay(study, settings)
    if best is not None:
        with atomic_file(out / "best.yaml", record=True) as f:
            f.write(best)
    return table


# -- the folder --------------------------------------------------------------------------------


@dataclass
class SweepSettings:
    output: str
    n_trials: int
    objective: str
    direction: str
    prune: bool
    sampler_seed: int
    fit_args: list[str]
    params: list[Param]

    def record(self) -> dict:
        """What must match for a run of the command to continue the sweep in ``output`` (not n_trials:
        a sweep can be extended)."""
        return {
            "objective": self.objective,
            "direction": self.direction,
            "fit_args": self.fit_args,
            "space": [asdict(p) | {"choices": list(p.choices) if p.choices else None} for p in self.params],
        }


def claim_folder(settings: SweepSettings) -> Any:
    """The output folder checked, made and locked: new, empty, or a sweep this project wrote with the
    same settings; one sweep process at a time (the lock goes with the process, even on kill -9).
    Returns the open lock file, to keep for the life of the sweep."""
    out = Path(settings.output)
    reason = protected_reason(out)
    if reason:
        raise UserInputError(f"refusing to write a sweep into {settings.output!r}: it is {reason}; give a new folder")
    if out.exists() and not out.is_dir():
        raise UserInputError(f"sweep output {settings.output!r} exists and is not a folder; give a new folder")
    ours = out.is_dir() and RECORD in (read_manifest(out) or set()) and (out / RECORD).is_file()
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not ours:
        raise UserInputError(
            f"sweep output {settings.output!r} exists and is not a sweep lora_lightning wrote (no {RECORD}); "
            "give a new or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / LOCK, "a+")  # noqa: SIM115 (held open until the process ends)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UserInputError(
            f"another lora-lightning sweep is running in {settings.output!r}; wait for it or give another --output"
        ) from None
    if ours:
        recorded = json.loads((out / RECORD).read_text(encoding="utf-8"))
        mine = json.loads(json.dumps(settings.record()))
        for what in ("space", "objective", "direction", "fit_args"):
            if recorded.get(what) != mine[what]:
                lock.close()
                raise UserInputError(
                    f"{settings.output!r} holds a sweep with another {what.replace('_', ' ')} ({RECORD}); "
                    "run it with the same ones to continue it, or give a new --output"
                )
    else:
        with atomic_file(out / RECORD, record=True) as f:
            json.dump(settings.record(), f, indent=1)
    return lock


# -- running it --------------------------------------------------------------------------------

# (subcommand, arguments, extra callbacks) -> the Trainer that ran: the CLI's, handed in by lora_lightning.cli
RunCommand = Callable[[str, list[str], list[Callback]], Trainer]
ParseConfig = Callable[[list[str]], Any]  # fit arguments -> the parsed config; UserInputError when bad


def check_settings(settings: SweepSettings, parse: ParseConfig) -> None:
    """Everything checkable before a trial runs: the fit arguments alone, then with each searched
    key at both ends of its range (so a bad key or value is one line naming it), one device, and a
    test objective that names a metric of a trained task."""
    for flag in ("--trainer.default_root_dir", "--ckpt_path"):
        if any(a == flag or a.startswith(f"{flag}=") for a in settings.fit_args):
            raise UserInputError(f"sweep sets {flag[2:]} itself (each trial runs in <output>/trial_<n>); drop {flag}")
    for p in settings.params:
        if any(a == f"--{p.key}" or a.startswith(f"--{p.key}=") for a in settings.fit_args):
            raise UserInputError(f"{p.key} is both searched (--space) and given (--{p.key}); drop one")
    config = parse(settings.fit_args)
    for end in (0, 1):
        args = list(settings.fit_args)
        for p in settings.params:
            args += [f"--{p.key}", value_arg(p.ends()[end])]
        try:
            parse(args)
        except UserInputError as err:
            ranges = ", ".join(f"{p.key} {p.describe()}" for p in settings.params)
            raise UserInputError(f"the sweep space does not fit the config: {err} (searched: {ranges})") from None
    devices, nodes = config["trainer"]["devices"], config["trainer"]["num_nodes"]
    if str(devices) not in ("1", "[0]") or nodes != 1:
        raise UserInputError(
            f"sweep runs each trial in its own process on one device; got trainer.devices {devices}, "
            f"num_nodes {nodes}: set --trainer.devices 1"
        )
    if settings.objective != "val_loss":
        parts = settings.objective.split("/")
        names = {}
        for task in config["data"]["tasks"] or []:
            spec = load_task(task)
            names[spec.name] = task_columns(spec.metrics)
        known = [f"test/{t}/{m}" for t, ms in names.items() for m in ms]
        if len(parts) != 3 or parts[0] != "test" or settings.objective not in known:
            raise UserInputError(
                f"--objective {settings.objective!r} is not val_loss or a test metric of the trained tasks: "
                f"{', '.join(['val_loss', *known])}"
            )


def run_trial(trial: Any, settings: SweepSettings, run: RunCommand) -> float:
    """One trial: fit (then test) with the trial's values; its objective value. Raises
    ``optuna.TrialPruned`` when pruned (after the run ended well), :class:`TrainingHalted` as fit does."""
    import optuna

    params = {p.key: p.suggest(trial) for p in settings.params}
    root = Path(settings.output) / f"trial_{trial.number}"
    args = list(settings.fit_args)
    for key, value in params.items():
        args += [f"--{key}", value_arg(value)]
    args += ["--trainer.default_root_dir", str(root)]
    trial.set_user_attr("dir", str(root))
    pruning = TrialPruning(trial) if settings.prune and settings.objective == "val_loss" else None
    started = time.monotonic()
    try:
        trainer = run("fit", args, [pruning] if pruning else [])
        summary = next((c for c in trainer.callbacks if isinstance(c, RunSummary)), None)
        del trainer
        best = summary.best if summary is not None else None
        if best is None:
            raise UserInputError(
                f"trial {trial.number} logged no val/loss after training, which the sweep ranks trials by; "
                "check trainer.limit_val_batches and trainer.check_val_every_n_epoch"
            )
        trial.set_user_attr("best_val_loss", best[0])
        trial.set_user_attr("best_step", best[1])
        if pruning is not None and pruning.pruned_at is not None:
            trial.set_user_attr("pruned_at", pruning.pruned_at)
            raise optuna.TrialPruned(f"pruned at step {pruning.pruned_at}")
        if settings.objective == "val_loss":
            return best[0]
        tested = run("test", [*args, "--model.adapter", str(root / "adapter"), "--model.score_base", "false"], [])
        metrics = {k: float(v) for k, v in tested.callback_metrics.items()}
        del tested
        if settings.objective not in metrics:
            raise UserInputError(f"trial {trial.number}'s test logged no {settings.objective}")
        return metrics[settings.objective]
    finally:
        trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            torch._dynamo.reset()  # a next trial compiles its own model, not against this one's guards


def sweep(settings: SweepSettings, run: RunCommand, parse: ParseConfig) -> str:
    """Runs (or continues) the study until ``n_trials`` trials have ended; returns the table."""
    import optuna

    check_settings(settings, parse)
    lock = claim_folder(settings)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(Path(settings.output) / 'study.db').resolve()}"
    pruner = optuna.pruners.MedianPruner() if settings.prune else optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name=STUDY, storage=storage, load_if_exists=True, direction=settings.direction, pruner=pruner
    )
    # Seeded by the trials already there: a continued sweep does not draw the first trials' values again.
    study.sampler = optuna.samplers.TPESampler(seed=settings.sampler_seed + len(study.trials))
    retried = recover(study)
    if retried:
        which = f"Trial {retried[0]} was" if len(retried) == 1 else f"Trials {', '.join(map(str, retried))} were"
        print(f"{which} left running by a stopped sweep: marked failed, its values queued again")
    s = states()
    try:
        while len(ended(study)) < settings.n_trials:
            trial = study.ask()
            try:
                value = run_trial(trial, settings, run)
            except optuna.TrialPruned:
                study.tell(trial, state=s.PRUNED)
            except TrainingHalted as err:
                trial.set_user_attr("halted", first_line(err))
                study.tell(trial, state=s.FAIL)
            except (KeyboardInterrupt, SIGTERMException):
                retry(study, study.get_trials(deepcopy=False)[trial.number])
                raise
            except BaseException:
                study.tell(trial, state=s.FAIL)
                raise
            else:
                study.tell(trial, value)
            done = study.get_trials(deepcopy=False)[trial.number]
            print(
                f"Trial {trial.number}: {trial_state(done, {})}"
                + (f", {settings.objective} {done.value:.6g}" if done.state == s.COMPLETE else "")
                + f" ({', '.join(f'{k} {fmt(v)}' for k, v in done.params.items())}); "
                f"{len(ended(study))} of {settings.n_trials} ended",
                flush=True,
            )
            write_outputs(study, settings)
        return write_outputs(study, settings)
    finally:
        lock.close()


# -- the command line --------------------------------------------------------------------------


def default_direction(objective: str) -> str:
    """val_loss is minimized; a test metric as the metric registry says (loss and perplexity down,
    accuracies and ROUGE up)."""
    if objective == "val_loss":
        return "minimize"
    metric = column_metric(objective.rsplit("/", 1)[-1])
    return "minimize" if metric is not None and not metric.higher_is_better else "maximize"


class OneLineArgs(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserInputError(f"sweep: {message} (see `lora-lightning sweep --help`)")


def true_false(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def sweep_command(argv: Sequence[str], prog: str, run: RunCommand, parse: ParseConfig) -> None:
    """Hyperparameter search with Optuna: each trial is a `fit` of the config with values drawn from a
    search space, in its own run folder; the study is resumable.

    lora-lightning sweep --space SPACE.yaml --n_trials N --output DIR [--objective val_loss|test/TASK/METRIC]
        [--direction minimize|maximize] [--prune true|false] [--sampler_seed 42] [FIT ARGUMENTS ...]

    SPACE.yaml maps config keys to what to try (flat dotted keys or nested):
        model.learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}   # a range; integers when low and high are
        model.lora_r: [8, 16, 32]                                      # a list: these values
    FIT ARGUMENTS are those of `lora-lightning fit` (--config configs/default.yaml ... --data.KEY V ...),
    the same for every trial; trial n runs in DIR/trial_<n>/ (TensorBoard log, adapter/, ckpt/).
    The objective is the best validation loss (val_loss: hp/best_val_loss, what the adapter is chosen
    by), or a metric of `test` on the trial's adapter (e.g. test/bool_q/accuracy_rank; slower: each
    trial is scored too), in the direction the metric registry gives it unless --direction.
    Pruning (Optuna's median pruner, after 5 trials) reads val/loss at every validation and stops a
    trial that is worse than the median at the same step; val_loss only.
    The study is DIR/study.db: run the same command again after a stop (kill -9 included) and it goes on,
    finished trials kept, one left running re-tried, until N trials have ended (a larger N extends it).
    DIR/trials.md (the table of trials, printed at the end) and DIR/best.yaml (the best trial's values as
    a config overlay: fit --config configs/default.yaml --config DIR/best.yaml) are rewritten after each trial.
    DIR must be new, empty, or a sweep this command wrote with the same space, objective and arguments.
    """
    parser = OneLineArgs(
        prog=f"{prog} sweep",
        description=inspect.cleandoc(sweep_command.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        usage=argparse.SUPPRESS,
    )
    parser.add_argument("--space", required=True, help="YAML file: config keys to lists or ranges")
    parser.add_argument("--n_trials", required=True, type=int, help="trials to end in the study (counting earlier)")
    parser.add_argument("--output", required=True, help="sweep folder: study.db, trial_<n>/, trials.md, best.yaml")
    parser.add_argument("--objective", default="val_loss", help="val_loss (default) or test/TASK/METRIC")
    parser.add_argument(
        "--direction",
        choices=("minimize", "maximize"),
        help="default: minimize val_loss, a test metric as it is better",
    )
    parser.add_argument("--prune", type=true_false, default=True, help="prune on val/loss (default true)")
    parser.add_argument("--sampler_seed", type=int, default=42, help="seed of Optuna's TPE sampler (default 42)")
    known, fit_args = parser.parse_known_args(list(argv))
    if importlib.util.find_spec("optuna") is None:
        raise UserInputError("sweep needs the optuna package: pip install 'lora-lightning[sweep]'")
    if fit_args and fit_args[0] == "fit":
        fit_args = fit_args[1:]
    if known.n_trials < 1:
        raise UserInputError(f"sweep: --n_trials must be at least 1, got {known.n_trials}")
    direction = known.direction or default_direction(known.objective)
    settings = SweepSettings(
        output=os.path.normpath(known.output),
        n_trials=known.n_trials,
        objective=known.objective,
        direction=direction,
        prune=known.prune,
        sampler_seed=known.sampler_seed,
        fit_args=fit_args,
        params=read_space(known.space),
    )
    table = sweep(settings, run, parse)
    print(table, end="")
    print(f"Written to {settings.output}/trials.md; the best settings to {settings.output}/best.yaml")
    sys.stdout.flush()
