"""Under DDP, ``test`` scores every evaluation example exactly once and ``predict`` writes every row once, in
input order (a distributed sampler pads the last ranks with repeats; those must not count)."""

import csv
import json

import pytest
from conftest import REPO, run_cli

pytestmark = pytest.mark.slow
CONFIG = str(REPO / "configs" / "default.yaml")
DDP = ("--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")


def common(model, root):
    return [
        "--config",
        CONFIG,
        "--model.model_name",
        str(model),
        "--trainer.default_root_dir",
        str(root),
        "--data.cache_dir",
        str(root / "cache"),
        "--trainer.precision",
        "32-true",
    ]


def test_ddp_test_scores_each_example_once_and_matches_one_process(tiny_models, tmp_path):
    args = ("--data.eval_examples_per_task", "5", "--data.batch_size", "2", "--data.max_length", "256")
    one = run_cli("test", *common(tiny_models["llama"], tmp_path / "one"), *args)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli("test", *common(tiny_models["llama"], tmp_path / "two"), *args, *DDP, fresh=True)
    assert two.returncode == 0, two.stderr[-3000:]
    # 15 examples in 9 batches (3 per task) over 2 ranks: the sampler repeats one batch to make 10
    title = (tmp_path / "two" / "eval_results.md").read_text().splitlines()[0]
    assert "bool_q 5 (validation); common_gen 5 (validation); xsum 5 (validation)" in title
    rows = {name: list(csv.DictReader((tmp_path / name / "eval_results.csv").open())) for name in ("one", "two")}
    assert [r["metric"] for r in rows["one"]] == [r["metric"] for r in rows["two"]]
    for a, b in zip(rows["one"], rows["two"]):
        assert float(a["model"]) == pytest.approx(float(b["model"]), abs=1e-3, nan_ok=True), a["metric"]


def test_ddp_predict_writes_every_row_once_in_input_order(tiny_models, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Question {i}: is {i} even?", "n": i}) for i in range(5)))
    out = tmp_path / "out.jsonl"
    done = run_cli(
        "predict",
        *common(tiny_models["llama"], tmp_path / "run"),
        *DDP,
        "--data.batch_size",
        "2",
        "--data.predict_file",
        str(prompts),
        "--predictions.output",
        str(out),
        "--model.max_new_tokens",
        "4",
        fresh=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["n"] for r in rows] == [0, 1, 2, 3, 4]  # 3 batches on 2 ranks: the padded repeat is dropped
    assert all(isinstance(r["completion"], str) for r in rows)
