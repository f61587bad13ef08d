"""Per-task curves, comparable runs and early stopping, read back from TensorBoard event files as a user sees them."""

import csv
import json

import pytest
from conftest import REPO, run_cli, tiny_fit_args
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lora_lightning.evaluation.runs import read_run

pytestmark = pytest.mark.slow
TASKS = ("bool_q", "common_gen", "xsum")


def fit(model, root, *extra):
    keys = {
        "data.max_examples_per_task": 8,
        "trainer.max_epochs": 2,
        "trainer.log_every_n_steps": 1,
        "samples.samples_per_task": 0,
        "data.batch_size": 4,
        "trainer.precision": "32-true",
    }
    done = run_cli(*tiny_fit_args(model, root, keys, *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def scalars(root):
    (folder,) = (root / "lightning_logs").glob("version_*")
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}, folder


@pytest.mark.parametrize("devices", [1, 2])
def test_per_task_curves_combine_into_the_total_and_the_run_is_summarised(tiny_models, tmp_path, devices):
    extra = (
        (
            "--trainer.strategy",
            "ddp",
            "--trainer.devices",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--data.batch_size",
            "2",
        )
        if devices == 2
        else ()
    )
    fit(tiny_models["llama"], tmp_path, *extra)
    logged, folder = scalars(tmp_path)
    for task in TASKS:
        val = logged[f"val/{task}/loss"]
        assert 0 in val and len(val) == 3  # the step-0 "before training" point, then after each epoch
    # weighted by their tokens, the per-task losses of a step are the step's loss
    steps = sorted(logged["train/loss"])
    assert len(steps) == 12  # 24 examples, global batch 4, 2 epochs
    for step in steps:
        parts = [
            (logged[f"train/{t}/loss"][step], logged[f"train/{t}/tokens"][step])
            for t in TASKS
            if logged[f"train/{t}/tokens"][step] > 0
        ]
        combined = sum(loss * tokens for loss, tokens in parts) / sum(tokens for _, tokens in parts)
        assert combined == pytest.approx(logged["train/loss"][step], rel=1e-5)
    history = json.loads((tmp_path / "adapter_last" / "training_history.json").read_text())
    assert [m["epoch"] for m in history["mix_per_epoch"]] == [0, 1]
    assert {t: v["examples"] for t, v in history["mix_per_epoch"][0]["tasks"].items()} == dict.fromkeys(TASKS, 8)
    epoch_tokens = sum(v["completion_tokens"] for v in history["mix_per_epoch"][0]["tasks"].values())
    assert epoch_tokens == sum(logged["train/step_tokens"][s] for s in steps[:6])
    # the hparams record: settings, the realised mix, and the best validation loss with its step
    run = read_run(folder)
    assert run["settings"]["lora_r"] == 4 and run["settings"]["devices"] == devices
    assert run["settings"]["mix/xsum/examples"] == 8 and run["settings"]["mix/xsum/completion_tokens"] > 0
    best = min(v for s, v in logged["val/loss"].items() if s > 0)
    assert run["metrics"]["hp/best_val_loss"] == pytest.approx(best, rel=1e-5)
    assert run["metrics"]["hp/best_step"] in (6, 12)


def test_two_runs_compare_from_their_event_files_with_their_evaluation(tiny_models, tmp_path):
    for r in ("4", "8"):
        fit(tiny_models["llama"], tmp_path / f"r{r}", "--model.lora_r", r, "--trainer.max_epochs", "1")
    scored = run_cli(
        "test",
        "--config",
        str(REPO / "configs" / "default.yaml"),
        "--model.model_name",
        "null",
        "--model.adapter",
        str(tmp_path / "r8" / "adapter"),
        "--data.eval_examples_per_task",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path / "r8"),
        "--trainer.precision",
        "32-true",
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    out = run_cli("compare", str(tmp_path / "r4"), str(tmp_path / "r8"))
    assert out.returncode == 0, out.stderr[-3000:]
    header, _, row4, row8 = out.stdout.strip().splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = {
        name: dict(zip(columns, (c.strip() for c in row.strip("|").split("|"))))
        for name, row in (("r4", row4), ("r8", row8))
    }
    assert cells["r4"]["lora_r"] == "4" and cells["r8"]["lora_r"] == "8"
    assert cells["r4"]["best_val_loss"] and cells["r8"]["best_val_loss"]
    assert cells["r8"]["test/bool_q/accuracy_rank"] and not cells["r4"]["test/bool_q/accuracy_rank"]
    table = {(r["task"], r["metric"]): r for r in csv.DictReader((tmp_path / "r8" / "eval_results.csv").open())}
    assert float(cells["r8"]["test/bool_q/accuracy_rank"]) == pytest.approx(
        float(table[("bool_q", "accuracy_rank")]["adapter"]), abs=1e-3
    )


def test_early_stopping_stops_before_max_epochs_and_exports_the_best_adapter(tiny_models, tmp_path):
    # an improvement must be worth 10 nats: none is, so the run stops after patience 1 validation without one
    out = fit(
        tiny_models["llama"],
        tmp_path,
        "--trainer.max_epochs",
        "6",
        "--early_stopping.patience",
        "1",
        "--early_stopping.min_delta",
        "10",
    )
    history = json.loads((tmp_path / "adapter_last" / "training_history.json").read_text())
    assert history["global_step"] == 12 < 36  # two epochs of six
    best = json.loads((tmp_path / "adapter" / "training_history.json").read_text())
    assert best["best_step"] == min(best["val_loss"][1:], key=lambda p: p[1])[0]
    assert "Monitored metric val/loss did not improve" in out.stderr
