"""lm-evaluation-harness, both ways, offline: an exported adapter scored by plain `lm_eval --model hf
... peft=ADAPTER`, on the tasks `lora-lightning lm-eval-tasks` writes; the harness's bool_q accuracy
equals `lora-lightning test`'s rank accuracy on the same rows and template."""

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, run_cli

pytestmark = pytest.mark.slow
lm_eval = pytest.importorskip("lm_eval", reason="the lm-eval extra is not installed: pip install -e '.[lm-eval]'")
CONFIG = str(REPO / "configs" / "default.yaml")
MAX_LENGTH = 256


def common(model, root):
    return [
        "--config",
        CONFIG,
        "--model.model_name",
        str(model),
        "--data.tasks",
        "[bool_q, xsum]",
        "--data.max_length",
        str(MAX_LENGTH),
        "--data.eval_examples_per_task",
        "12",
        "--data.cache_dir",
        str(root / "cache"),
        "--trainer.precision",
        "32-true",
        "--samples.samples_per_task",
        "0",
    ]


def test_harness_scores_the_adapter_as_lora_lightning_test_does(tiny_models, tmp_path):
    model, run = tiny_models["llama"], tmp_path / "run"
    fit = run_cli(
        "fit",
        *common(model, run),
        "--model.lora_r",
        "4",
        "--model.learning_rate",
        "0.01",
        "--data.max_examples_per_task",
        "16",
        "--trainer.max_steps",
        "3",
        "--trainer.default_root_dir",
        str(run),
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    adapter = run / "adapter_last"
    tested = run_cli(
        "test", *common(model, run), "--model.adapter", str(adapter), "--trainer.default_root_dir", str(run)
    )
    assert tested.returncode == 0, tested.stderr[-3000:]
    ours = {(r["task"], r["metric"]): r for r in csv.DictReader((run / "eval_results.csv").open())}

    tasks = tmp_path / "tasks"
    exported = run_cli("lm-eval-tasks", str(tasks), *common(model, run), "--model.adapter", str(adapter))
    assert exported.returncode == 0, exported.stderr[-3000:]
    bool_q = yaml.safe_load((tasks / "bool_q.yaml").read_text())
    assert bool_q["output_type"] == "multiple_choice" and bool_q["task"] == "lora_lightning_bool_q"
    assert "output_type: generate_until" in (tasks / "xsum.yaml").read_text()
    rows = [json.loads(line) for line in (tasks / "bool_q.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(len(r["choices"]) == 2 and r["choices"][r["label"]] for r in rows)

    # plain lm_eval, no project code: the base from its folder, the adapter through peft
    results = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    harness = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={model},peft={adapter},max_length={MAX_LENGTH - 1},dtype=float32",
            "--include_path",
            str(tasks),
            "--tasks",
            "lora_lightning",
            "--device",
            "cpu",
            "--batch_size",
            "4",
            "--output_path",
            str(results),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert harness.returncode == 0, harness.stderr[-4000:]
    scores = json.loads(next(results.rglob("results_*.json")).read_text())["results"]
    accuracy = scores["lora_lightning_bool_q"]["acc,none"]
    assert 100 * accuracy == pytest.approx(float(ours[("bool_q", "accuracy_rank")]["adapter"]), abs=1e-6)
    rouge = scores["lora_lightning_xsum"]["rougeL,none"]
    assert 0 <= rouge <= 100
    print(f"harness bool_q acc {accuracy:.4f}, xsum rougeL {rouge:.2f} (ours {ours[('xsum', 'rouge_l')]['adapter']})")
