"""``lora-lightning sweep``: the search space, the study's bookkeeping (on a stub run), and end to end on a
tiny model: a 3-trial sweep whose best.yaml ``fit`` takes, and a sweep killed with SIGKILL then continued."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import DEFAULT_CONFIG, REPO, run_cli, tiny_fit_args

from lora_lightning.callbacks import RunSummary
from lora_lightning.errors import TrainingHalted, UserInputError
from lora_lightning.evaluation.runs import read_run
from lora_lightning.sweep import (
    SweepSettings,
    TrialPruning,
    default_direction,
    overlay,
    parse_space,
    read_space,
    sweep,
    sweep_command,
)

optuna = pytest.importorskip("optuna")

# -- the search space ----------------------------------------------------------------------------


def test_space_flat_and_nested_lists_and_ranges():
    raw = yaml.safe_load(
        """
model.learning_rate: {low: 1e-4, high: 3e-3, log: true}   # 1e-4 is a string to YAML 1.1
model:
  lora_r: [8, 16, 32]
  lora_dropout: {low: 0.0, high: 0.2, step: 0.05}
data.batch_size: {low: 2, high: 8, step: 2}
"""
    )
    params = {p.key: p for p in parse_space(raw)}
    assert list(params) == ["model.learning_rate", "model.lora_r", "model.lora_dropout", "data.batch_size"]
    lr = params["model.learning_rate"]
    assert (lr.low, lr.high, lr.log, lr.integer) == (1e-4, 3e-3, True, False)
    assert params["model.lora_r"].choices == (8, 16, 32)
    assert params["model.lora_dropout"].step == 0.05 and not params["model.lora_dropout"].integer
    assert params["data.batch_size"].integer and params["data.batch_size"].ends() == (2, 8)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        values = {key: p.suggest(trial) for key, p in params.items()}
        assert 1e-4 <= values["model.learning_rate"] <= 3e-3 and values["model.lora_r"] in (8, 16, 32)
        assert values["data.batch_size"] in (2, 4, 6, 8) and isinstance(values["data.batch_size"], int)
        assert round(values["model.lora_dropout"] / 0.05, 6) % 1 == 0
        study.tell(trial, 0.0)
    assert overlay({"model.lora_r": 8, "model.learning_rate": 1e-3, "data.batch_size": 4}) == {
        "model": {"lora_r": 8, "learning_rate": 1e-3},
        "data": {"batch_size": 4},
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "the sweep space must be a mapping of config keys to a list or a range"),
        ("model.lora_r: 8", "sweep space model.lora_r: give a list of values to try, or {low: L, high: H}"),
        ("model.lora_r: []", "sweep space model.lora_r: the list of values is empty"),
        ("model.lora_r: [8, [16]]", "sweep space model.lora_r: each value must be a number, string, true/false"),
        ("model.lora_r: [8, 8]", "sweep space model.lora_r: the list [8, 8] repeats a value"),
        ("model.learning_rate: {low: 1e-4, hihg: 1e-3}", "sweep space model.learning_rate: unknown range key 'hihg'"),
        ("model.learning_rate: {low: 1e-4}", "sweep space model.learning_rate: a range needs both low and high"),
        ("model.learning_rate: {low: 1e-3, high: 1e-4}", "sweep space model.learning_rate: low (0.001) must be below"),
        ("model.learning_rate: {low: 0, high: 1, log: true}", "a log range needs low above 0, got 0"),
        ("model.learning_rate: {low: 1, high: 2, log: true, step: 1}", "give log or step, not both"),
        (
            "model.learning_rate: {low: fast, high: 2}",
            "sweep space model.learning_rate: low must be a number, got 'fast'",
        ),
        ("model.learning_rate: {low: 1, high: .inf}", "high must be a finite number"),
        ("model.learning_rate: {low: 1, high: 2, log: yes please}", "log must be true or false"),
        ("model: {}", "model must be a mapping of config keys"),
        ("model: {lora_r: 8}", "sweep space model.lora_r: give a list of values"),
    ],
)
def test_bad_space_is_one_line_naming_the_key(text, message):
    with pytest.raises(UserInputError) as err:
        parse_space(yaml.safe_load(text))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_space_file_missing_or_not_yaml(tmp_path):
    with pytest.raises(UserInputError, match="sweep space file .*nope.yaml' does not exist"):
        read_space(str(tmp_path / "nope.yaml"))
    (tmp_path / "bad.yaml").write_text("model.lora_r: [8, 16\n")
    with pytest.raises(UserInputError, match="bad.yaml' is not valid YAML"):
        read_space(str(tmp_path / "bad.yaml"))


# -- pruning -------------------------------------------------------------------------------------


class FakeTrial:
    def __init__(self, prune_after: int):
        self.reported: list[tuple[int, float]] = []
        self.prune_after = prune_after

    def report(self, value, step):
        self.reported.append((step, value))

    def should_prune(self):
        return len(self.reported) >= self.prune_after


class FakeTrainer:
    def __init__(self, step, loss, sanity=False):
        import torch

        self.sanity_checking, self.global_step = sanity, step
        self.callback_metrics = {"val/loss": torch.tensor(loss)}
        self.should_stop = False


def test_pruning_reports_each_validation_and_stops_the_run():
    trial = FakeTrial(prune_after=2)
    pruning = TrialPruning(trial)
    pruning.on_validation_end(FakeTrainer(0, 9.0, sanity=True), None)  # the sanity check is not a result
    first = FakeTrainer(10, 2.5)
    pruning.on_validation_end(first, None)
    assert trial.reported == [(10, 2.5)] and not first.should_stop and pruning.pruned_at is None
    second = FakeTrainer(20, 2.25)
    pruning.on_validation_end(second, None)
    assert trial.reported == [(10, 2.5), (20, 2.25)] and second.should_stop and pruning.pruned_at == 20


# -- the study, on a stub run --------------------------------------------------------------------


def stub_config(devices=1):
    return {"trainer": {"devices": devices, "num_nodes": 1}, "data": {"tasks": ["bool_q"]}}


class StubRun:
    """Stands for the CLI: a "fit" whose best validation loss is a function of the trial's values."""

    def __init__(self, halt_at=None):
        self.calls: list[list[str]] = []
        self.halt_at = halt_at

    def __call__(self, subcommand, args, callbacks):
        self.calls.append([subcommand, *args])
        values = dict(zip(args[::2], args[1::2], strict=False))
        if self.halt_at is not None and len(self.calls) == self.halt_at:
            raise TrainingHalted("non-finite loss at step 3")
        summary = RunSummary()
        summary.best = (abs(float(values["--model.learning_rate"]) - 1e-3) * 1000 + int(values["--model.lora_r"]), 4)

        class Trainer:
            callbacks = [summary]
            callback_metrics = {"test/bool_q/accuracy_rank": 0.5}

        return Trainer()


def settings_for(tmp_path, n_trials=3, **kw):
    return SweepSettings(
        output=str(tmp_path / "sweep"),
        n_trials=n_trials,
        objective=kw.get("objective", "val_loss"),
        direction=kw.get("direction", "minimize"),
        prune=True,
        sampler_seed=0,
        fit_args=kw.get("fit_args", ["--config", "x.yaml"]),
        params=parse_space({"model.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "model.lora_r": [4, 8]}),
    )


def load(tmp_path):
    return optuna.load_study(study_name="lora-lightning-sweep", storage=f"sqlite:///{tmp_path / 'sweep' / 'study.db'}")


def test_study_runs_to_n_trials_writes_the_table_and_the_best_overlay(tmp_path):
    run = StubRun()
    settings = settings_for(tmp_path)
    table = sweep(settings, run, lambda args: stub_config())
    study = load(tmp_path)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 and len(run.calls) == 3
    for t, call in zip(trials, run.calls, strict=True):  # each trial a fit in its own folder, with its values
        assert call[0] == "fit" and call[1:3] == ["--config", "x.yaml"]
        assert call[-2:] == ["--trainer.default_root_dir", str(tmp_path / "sweep" / f"trial_{t.number}")]
        assert call[call.index("--model.lora_r") + 1] == str(t.params["model.lora_r"])
        assert t.value == pytest.approx(abs(t.params["model.learning_rate"] - 1e-3) * 1000 + t.params["model.lora_r"])
    best = min(trials, key=lambda t: t.value)
    assert yaml.safe_load((tmp_path / "sweep" / "best.yaml").read_text()) == {
        "model": {"learning_rate": best.params["model.learning_rate"], "lora_r": best.params["model.lora_r"]}
    }
    assert (tmp_path / "sweep" / "trials.md").read_text() == table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "trial" not in line]
    assert len(rows) == 3 and f"| **{best.number}** | complete | {best.value:.4g} | 4 |" in table
    assert table.startswith(f"Sweep {tmp_path / 'sweep'}: 3 of 3 trials ended, objective val_loss (minimize)")
    # run again with a larger n_trials: the 3 are kept, 2 more run
    sweep(settings_for(tmp_path, n_trials=5), run, lambda args: stub_config())
    assert len(run.calls) == 5 and [t.number for t in load(tmp_path).get_trials()] == [0, 1, 2, 3, 4]


def test_a_trial_left_running_is_failed_and_retried_with_its_values(tmp_path):
    settings = settings_for(tmp_path)
    sweep(settings_for(tmp_path, n_trials=1), StubRun(), lambda args: stub_config())
    study = load(tmp_path)
    left = study.ask()  # what a sweep killed mid-trial leaves: a RUNNING trial with its values
    values = {p.key: p.suggest(left) for p in settings.params}
    run = StubRun()
    table = sweep(settings, run, lambda args: stub_config())
    trials = load(tmp_path).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].params == values and trials[2].user_attrs["retry_of"] == 1
    assert len(run.calls) == 2  # trial 0 was not run again
    assert "| 1 | stopped; re-run as trial 2 |" in table


def test_a_halted_trial_counts_as_ended(tmp_path):
    run = StubRun(halt_at=2)
    table = sweep(settings_for(tmp_path), run, lambda args: stub_config())
    assert [t.state.name for t in load(tmp_path).get_trials()] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "| 1 | halted (non-finite loss) |" in table and len(run.calls) == 3


def test_a_test_metric_objective_tests_each_adapter(tmp_path):
    run = StubRun()
    settings = settings_for(tmp_path, n_trials=1, objective="test/bool_q/accuracy_rank", direction="maximize")
    table = sweep(settings, run, lambda args: stub_config())
    assert [c[0] for c in run.calls] == ["fit", "test"]
    assert run.calls[1][-4:] == ["--model.adapter", str(tmp_path / "sweep" / "trial_0" / "adapter")] + [
        "--model.score_base",
        "false",
    ]
    assert load(tmp_path).best_value == 0.5 and "best val_loss" in table


def test_default_direction_follows_the_metric_registry():
    assert default_direction("val_loss") == "minimize"
    assert default_direction("test/bool_q/accuracy_rank") == "maximize"
    assert default_direction("test/xsum/rouge_l") == "maximize"
    assert default_direction("test/xsum/loss") == "minimize" and default_direction("test/xsum/perplexity") == "minimize"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"objective": "test/xsum/rouge_l"},
            "is not val_loss or a test metric of the trained tasks: val_loss, test/bool_q/",
        ),
        ({"fit_args": ["--model.lora_r", "8"]}, "model.lora_r is both searched (--space) and given (--model.lora_r)"),
        ({"fit_args": ["--trainer.default_root_dir", "x"]}, "sweep sets trainer.default_root_dir itself"),
        ({"fit_args": ["--ckpt_path=last"]}, "sweep sets ckpt_path itself"),
    ],
)
def test_settings_checked_before_any_trial(tmp_path, change, message):
    settings = settings_for(tmp_path, **change)
    with pytest.raises(UserInputError) as err:
        sweep(settings, StubRun(), lambda args: stub_config())
    assert message in str(err.value)
    assert not (tmp_path / "sweep").exists()
    with pytest.raises(UserInputError, match="on one device; got trainer.devices 2"):
        sweep(settings_for(tmp_path), StubRun(), lambda args: stub_config(devices=2))


def test_output_folder_that_is_not_this_sweeps_is_refused(tmp_path):
    foreign = tmp_path / "sweep"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="exists and is not a sweep lora_lightning wrote"):
        sweep(settings_for(tmp_path), StubRun(), lambda args: stub_config())
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    (foreign / "notes.txt").unlink()
    sweep(settings_for(tmp_path, n_trials=1), StubRun(), lambda args: stub_config())
    other = settings_for(tmp_path, fit_args=["--config", "y.yaml"])
    with pytest.raises(UserInputError, match="holds a sweep with another fit args"):
        sweep(other, StubRun(), lambda args: stub_config())
    with pytest.raises(UserInputError, match="refusing to write a sweep into '.': it is the current directory"):
        sweep_command(
            ["--space", str(space_file(tmp_path)), "--n_trials", "1", "--output", "."],
            "x",
            StubRun(),
            lambda a: stub_config(),
        )


def test_one_sweep_process_per_folder(tmp_path):
    import fcntl

    sweep(settings_for(tmp_path, n_trials=1), StubRun(), lambda args: stub_config())
    with open(tmp_path / "sweep" / ".sweep.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running sweep holds it
        with pytest.raises(UserInputError, match="another lora-lightning sweep is running in"):
            sweep(settings_for(tmp_path, n_trials=2), StubRun(), lambda args: stub_config())


# -- the command line, end to end ----------------------------------------------------------------

SPACE = "model.learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}\nmodel:\n  lora_r: [2, 4]\n"
KEYS = {
    "data.max_examples_per_task": 8,
    "data.max_val_examples_per_task": 4,
    "trainer.max_epochs": 1,
    "samples.samples_per_task": 0,
    "data.batch_size": 4,
    "trainer.precision": "32-true",
}


def space_file(tmp_path, text=SPACE):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def sweep_args(model, tmp_path, n_trials=3):
    """The tiny fit's arguments without ``fit`` and ``--model.lora_r`` (searched) or the run folder."""
    fit = tiny_fit_args(model, tmp_path / "unused", KEYS)[1:]
    at = fit.index("--model.lora_r")
    fit = fit[:at] + fit[at + 2 :]
    at = fit.index("--trainer.default_root_dir")
    fit = fit[:at] + fit[at + 2 :]
    out = tmp_path / "sweep"
    return ["sweep", "--space", str(space_file(tmp_path)), "--n_trials", str(n_trials), "--output", str(out), *fit]


def test_bad_space_through_the_cli_is_one_line_exit_2(tiny_models, tmp_path):
    args = sweep_args(tiny_models["llama"], tmp_path)
    space_file(tmp_path, "model.lora_r: {low: 8}\n")
    done = run_cli(*args)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "lora-lightning: error: sweep space model.lora_r: a range needs both low and high"
    ]
    space_file(tmp_path, "model.lora_rank: [8, 16]\n")  # not a key of the config: checked before any trial
    done = run_cli(*args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("lora-lightning: error: the sweep space does not fit the config:") and "lora_rank" in last
    assert not (tmp_path / "sweep").exists()
    done = run_cli("sweep", "--space", str(space_file(tmp_path)), "--output", str(tmp_path / "s"))
    assert done.returncode == 2 and "the following arguments are required: --n_trials" in done.stderr


@pytest.mark.slow
def test_three_trial_sweep_writes_its_table_and_a_best_overlay_that_fit_takes(tiny_models, tmp_path):
    started = time.monotonic()
    done = run_cli(*sweep_args(tiny_models["llama"], tmp_path))
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "sweep"
    study = optuna.load_study(study_name="lora-lightning-sweep", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for t in trials:  # each trial an ordinary run: its TensorBoard record holds its values and objective
        folder = out / f"trial_{t.number}"
        assert (folder / "adapter" / "adapter_model.safetensors").is_file()
        (log,) = (folder / "lightning_logs").glob("version_*")
        run = read_run(log)
        assert run["settings"]["lora_r"] == t.params["model.lora_r"]
        assert run["settings"]["learning_rate"] == pytest.approx(t.params["model.learning_rate"], rel=1e-12)
        assert run["metrics"]["hp/best_val_loss"] == pytest.approx(t.value, rel=1e-6)
    table = (out / "trials.md").read_text()
    assert table in done.stdout and len([line for line in table.splitlines() if "| complete |" in line]) == 3
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best == {
        "model": {
            "learning_rate": study.best_params["model.learning_rate"],
            "lora_r": study.best_params["model.lora_r"],
        }
    }
    print(f"3-trial sweep: {seconds:.0f} s\n{table}")  # the measurement docs/configuration.md quotes
    # fit takes it as an overlay, and its values reach the run's hparams
    root = tmp_path / "best_run"
    fit = ["fit", "--config", DEFAULT_CONFIG, "--config", str(out / "best.yaml")]
    fit += ["--model.model_name", str(tiny_models["llama"]), "--trainer.default_root_dir", str(root)]
    fit += ["--data.cache_dir", str(tmp_path / "cache")] + [a for k, v in KEYS.items() for a in (f"--{k}", str(v))]
    done = run_cli(*fit)
    assert done.returncode == 0, done.stderr[-3000:]
    (log,) = (root / "lightning_logs").glob("version_*")
    settings = read_run(log)["settings"]
    assert settings["lora_r"] == study.best_params["model.lora_r"]
    assert settings["learning_rate"] == pytest.approx(study.best_params["model.learning_rate"], rel=1e-12)
    assert read_run(log)["metrics"]["hp/best_val_loss"] == pytest.approx(study.best_value, rel=1e-6)


def study_states(db: Path) -> dict[int, tuple[str, int]]:
    """Trial number -> (state, how many of its parameters are recorded), read as the sweep writes."""
    if not db.is_file():
        return {}
    query = (
        "SELECT t.number, t.state, COUNT(p.param_id) FROM trials t "
        "LEFT JOIN trial_params p ON p.trial_id = t.trial_id GROUP BY t.trial_id ORDER BY t.number"
    )
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return {number: (state, params) for number, state, params in con.execute(query).fetchall()}
    except sqlite3.OperationalError:  # tables not made yet
        return {}


@pytest.mark.slow
def test_sweep_killed_mid_trial_continues_where_it_was(tiny_models, tmp_path):
    args = sweep_args(tiny_models["llama"], tmp_path)
    db = tmp_path / "sweep" / "study.db"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lora_lightning", *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            states = study_states(db)
            if states.get(0, ("",))[0] == "COMPLETE" and states.get(1) == ("RUNNING", 2):  # values drawn, fitting
                break
            time.sleep(0.2)
        assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert study_states(db) == {0: ("COMPLETE", 2), 1: ("RUNNING", 2)}
    first = optuna.load_study(study_name="lora-lightning-sweep", storage=f"sqlite:///{db}").get_trials()
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Trial 1 was left running by a stopped sweep: marked failed, its values queued again" in done.stdout
    trials = optuna.load_study(study_name="lora-lightning-sweep", storage=f"sqlite:///{db}").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    # trial 0 kept as it was, not run again (one TensorBoard version in its folder); 1's values re-tried as 2
    assert trials[0].value == first[0].value and trials[0].params == first[0].params
    assert len(list((tmp_path / "sweep" / "trial_0" / "lightning_logs").glob("version_*"))) == 1
    assert trials[2].params == first[1].params and trials[2].user_attrs["retry_of"] == 1
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    table = (tmp_path / "sweep" / "trials.md").read_text()
    assert "| 1 | stopped; re-run as trial 2 |" in table and "3 of 3 trials ended" in table
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["objective"] == "val_loss"


def test_sweep_without_optuna_is_one_line(tmp_path):
    """optuna made unimportable (None in sys.modules) in a fresh interpreter."""
    args = ["sweep", "--space", str(space_file(tmp_path)), "--n_trials", "1", "--output", str(tmp_path / "s")]
    code = f"import sys; sys.modules['optuna'] = None; from lora_lightning.cli import main; main({args!r})"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "lora-lightning: error: sweep needs the optuna package: pip install 'lora-lightning[sweep]'"
    ]
    assert not (tmp_path / "s").exists()
