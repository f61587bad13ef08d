"""Experiment trackers as overlays (configs/mlflow.yaml, configs/wandb.yaml): a tiny fit and test read back
from MLflow's store and W&B's offline run folder, TensorBoard kept beside them, the missing-package error."""

import json
import os
import subprocess
import sys

import pytest
from conftest import DEFAULT_CONFIG, REPO, run_cli, tiny_fit_args

from lora_lightning.evaluation.runs import read_run

TASKS = ("bool_q", "common_gen", "xsum")
KEYS = {
    "data.max_examples_per_task": 8,
    "data.max_val_examples_per_task": 4,
    "trainer.max_epochs": 1,
    "trainer.log_every_n_steps": 1,
    "samples.samples_per_task": 0,
    "data.batch_size": 4,
    "trainer.precision": "32-true",
}


def eval_args(model, root, *overlays):
    """``test`` of the adapter ``root`` trained, on 2 evaluation rows per task, with the same overlays."""
    args = ["test", "--config", DEFAULT_CONFIG]
    for overlay in overlays:
        args += ["--config", str(REPO / "configs" / overlay)]
    return args + [
        "--model.model_name",
        str(model),
        "--model.adapter",
        str(root / "adapter"),
        "--data.eval_examples_per_task",
        "2",
        "--data.cache_dir",
        str(root / "cache"),
        "--trainer.default_root_dir",
        str(root / "eval"),
    ]


def tensorboard_run(root):
    (folder,) = (root / "lightning_logs").glob("version_*")
    return read_run(folder)


@pytest.mark.slow
def test_mlflow_overlay_logs_curves_settings_adapter_and_results(tiny_models, tmp_path):
    from mlflow.tracking import MlflowClient

    root = tmp_path / "run"
    fit = run_cli(*tiny_fit_args(tiny_models["llama"], root, KEYS, overlays=("mlflow.yaml",)), cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    test = run_cli(*eval_args(tiny_models["llama"], root, "mlflow.yaml"), cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]

    # TensorBoard is still written, first: the hparams record and hp/best_val_loss read back as before
    board = tensorboard_run(root)
    assert board["settings"]["lora_r"] == 4 and board["settings"]["mix/xsum/examples"] == 8

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "lora-lightning"]
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    trained, tested = runs
    metrics, params = trained.data.metrics, trained.data.params
    for task in TASKS:  # the per-task curves (TaskCurves' names), their history per step
        assert f"val/{task}/loss" in metrics and f"train/{task}/loss" in metrics
        history = client.get_metric_history(trained.info.run_id, f"val/{task}/loss")
        assert [m.step for m in history][0] == 0 and len(history) == 2  # before training, after the epoch
    best = [m.value for m in client.get_metric_history(trained.info.run_id, "val/loss") if m.step > 0]
    assert metrics["hp/best_val_loss"] == pytest.approx(min(best), rel=1e-6)
    assert board["metrics"]["hp/best_val_loss"] == pytest.approx(metrics["hp/best_val_loss"], rel=1e-6)
    # params: the module's and data's hyperparameters, and the hparams record as run/<setting>
    assert params["lora_r"] == "4" and params["run/lora_r"] == "4"
    assert params["run/tasks"] == ",".join(TASKS) and params["run/mix/xsum/examples"] == "8"
    assert params["run/dir"] == str(root.resolve())
    # the adapter folders as artifacts, file for file
    for folder in ("adapter", "adapter_last"):
        logged = {f.path for f in client.list_artifacts(trained.info.run_id, folder)}
        on_disk = {f"{folder}/{p.name}" for p in (root / folder).iterdir()}
        assert {f"{folder}/adapter_model.safetensors", f"{folder}/adapter_config.json"} <= logged
        assert logged == on_disk
    local = client.download_artifacts(trained.info.run_id, "adapter/adapter_model.safetensors", str(tmp_path / "dl"))
    assert open(local, "rb").read() == (root / "adapter" / "adapter_model.safetensors").read_bytes()
    # `test` with the overlay: its metrics and the results table in a run of its own
    assert tested.data.metrics["test/bool_q/accuracy_rank"] == pytest.approx(
        float(next(r for r in csv_rows(root) if r["metric"] == "accuracy_rank")["adapter"]), abs=1e-6
    )
    assert {f.path for f in client.list_artifacts(tested.info.run_id)} >= {"eval_results.md", "eval_results.csv"}
    table = client.download_artifacts(tested.info.run_id, "eval_results.md", str(tmp_path / "dl2"))
    assert open(table).read() == (root / "eval_results.md").read_text()


def wandb_records(path):
    """The protobuf records of an offline run's ``.wandb`` file: a ``:W&B`` header, then LevelDB-log
    framing (32 KiB blocks; each chunk a 7-byte header of CRC, length, and full/first/middle/last)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, pos, block, pending = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        pending = (b"" if kind in (1, 2) else pending) + data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            yield record


def csv_rows(root):
    import csv

    return [r for r in csv.DictReader((root / "eval_results.csv").open()) if r["task"] == "bool_q"]


@pytest.mark.slow
def test_wandb_overlay_writes_an_offline_run_with_the_adapter_files(tiny_models, tmp_path, monkeypatch):
    root = tmp_path / "run"
    wandb_dir = tmp_path / "wb"
    wandb_dir.mkdir()
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    fit = run_cli(*tiny_fit_args(tiny_models["llama"], root, KEYS, overlays=("wandb.yaml",)), cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    (run,) = (wandb_dir / "wandb").glob("offline-run-*")
    files = run / "files"
    for folder in ("adapter", "adapter_last"):
        for path in (root / folder).iterdir():
            copy = files / folder / path.name
            assert copy.is_file() and not copy.is_symlink() and copy.read_bytes() == path.read_bytes()
    (log,) = run.glob("run-*.wandb")
    config, history = {}, []
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":  # a key with "/" comes as nested_key
            history.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    assert config["lora_r"] == 4 and config["run/lora_r"] == 4 and config["run/mix/xsum/examples"] == 8
    for task in TASKS:  # the per-task curves: before training and after the epoch
        steps = [h["trainer/global_step"] for h in history if f"val/{task}/loss" in h]
        assert len(steps) == 2 and steps[0] == 0 < steps[1]
    best = [h["hp/best_val_loss"] for h in history if "hp/best_val_loss" in h]
    after = [h["val/loss"] for h in history if "val/loss" in h and h["trainer/global_step"] > 0]
    assert best and best[-1] == pytest.approx(min(after), rel=1e-6)
    assert not (tmp_path / "wandb").exists()  # WANDB_DIR is where it went
    # TensorBoard beside it, first
    assert tensorboard_run(root)["settings"]["lora_r"] == 4


@pytest.mark.parametrize(("overlay", "package"), [("mlflow.yaml", "mlflow"), ("wandb.yaml", "wandb")])
def test_a_tracker_overlay_without_its_package_is_one_line(tiny_models, tmp_path, overlay, package):
    """The package made unimportable (None in sys.modules) in a fresh interpreter: refused before the model loads."""
    args = tiny_fit_args(tiny_models["llama"], tmp_path / "run", KEYS, overlays=(overlay,))
    code = f"import sys; sys.modules[{package!r}] = None; from lora_lightning.cli import main; main({args!r})"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"lora-lightning: error: trainer.logger {'MLFlowLogger' if package == 'mlflow' else 'WandbLogger'} "
        f"(configs/{overlay}) needs the {package} package: pip install 'lora-lightning[{package}]'"
    )
    assert not (tmp_path / "run").exists()


def test_tracker_overlays_compose_and_keep_tensorboard_first():
    """Both overlays append to trainer.logger (``logger+``); TensorBoard is put back in front of them."""
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

    from lora_lightning.callbacks.tracker_artifacts import logger_class_paths, tensorboard_first
    from lora_lightning.cli import parse_config

    configs = [DEFAULT_CONFIG, str(REPO / "configs" / "mlflow.yaml"), str(REPO / "configs" / "wandb.yaml")]
    parsed = parse_config([a for c in configs for a in ("--config", c)])
    assert [p.rsplit(".", 1)[-1] for p in logger_class_paths(parsed.trainer.logger)] == ["MLFlowLogger", "WandbLogger"]
    mlflow_args = parsed.trainer.logger[0].init_args
    assert mlflow_args.tracking_uri == "sqlite:///mlflow.db" and mlflow_args.experiment_name == "lora-lightning"
    assert parsed.trainer.logger[1].init_args.offline is True

    class Stub:  # what tensorboard_first reads and sets of a Trainer
        default_root_dir = "runs/x"

        def __init__(self, loggers):
            self.loggers = loggers

    tracker = MLFlowLogger.__new__(MLFlowLogger)
    stub = Stub([tracker])
    tensorboard_first(stub)
    assert isinstance(stub.loggers[0], TensorBoardLogger) and stub.loggers[1] is tracker
    assert stub.loggers[0].save_dir == "runs/x"
    csv, board = CSVLogger("a"), TensorBoardLogger("b")
    stub = Stub([csv, board])
    tensorboard_first(stub)
    assert stub.loggers == [board, csv]
    stub = Stub([])
    tensorboard_first(stub)
    assert stub.loggers == []  # trainer.logger false: nothing added


def test_mlflow_and_wandb_overlays_hold_only_the_logger():
    import yaml

    for name in ("mlflow.yaml", "wandb.yaml"):
        config = yaml.safe_load((REPO / "configs" / name).read_text())
        assert list(config) == ["trainer"] and list(config["trainer"]) == ["logger+"]


def test_eval_results_files_are_recorded_for_the_trackers(tmp_path):
    from lora_lightning.callbacks import EvaluationReport, TrackerArtifacts

    report = EvaluationReport()
    assert report.written == []
    (tmp_path / "eval_results.md").write_text("x")
    report.written = [tmp_path / "eval_results.md", tmp_path / "eval_results.csv"]  # the .csv is absent

    class Stub:
        callbacks = [report]

    assert TrackerArtifacts.outputs(Stub(), None, "test") == [tmp_path / "eval_results.md"]
    assert TrackerArtifacts.outputs(Stub(), None, "fit") == []
