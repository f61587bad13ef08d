"""data.eval_tasks: tasks scored but never trained on, kept apart in the table, the CSV and TensorBoard."""

import csv
import json

import pytest
from conftest import REPO, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lora_lightning.data.pipeline import load_tasks
from lora_lightning.errors import UserInputError

CONFIG = str(REPO / "configs" / "default.yaml")


def test_an_unseen_task_must_not_be_trained_on_and_may_have_its_own_files(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"document": "d", "summary": "s", "id": "1"}\n')
    specs, unseen, files = load_tasks(["bool_q"], {"xsum": str(tmp_path / "x.jsonl")}, ["xsum"])
    assert [t.name for t in specs] == ["bool_q"] and [t.name for t in unseen] == ["xsum"] and "xsum" in files
    with pytest.raises(UserInputError, match="data.eval_tasks names trained task"):
        load_tasks(["bool_q", "xsum"], {}, ["xsum"])
    with pytest.raises(UserInputError, match="not in data.tasks or data.eval_tasks"):
        load_tasks(["bool_q"], {"anli": "a.jsonl"}, ["xsum"])


def test_cli_refuses_a_trained_task_as_unseen_in_one_line():
    done = run_cli("fit", "--config", CONFIG, "--data.tasks", "[bool_q]", "--data.eval_tasks", "[bool_q]")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "data.eval_tasks names trained task(s) ['bool_q']" in errors[0]


@pytest.mark.slow
def test_unseen_tasks_are_scored_apart_and_never_trained(tiny_models, tmp_path):
    root = tmp_path / "run"
    common = ["--config", CONFIG, "--model.model_name", str(tiny_models["llama"]), "--data.tasks", "[bool_q]"]
    common += ["--data.cache_dir", str(root / "cache"), "--trainer.precision", "32-true"]
    fit = run_cli(
        "fit",
        *common,
        "--model.lora_r",
        "4",
        "--data.max_examples_per_task",
        "8",
        "--trainer.max_steps",
        "2",
        "--samples.samples_per_task",
        "0",
        "--trainer.default_root_dir",
        str(root),
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    history = json.loads((root / "adapter_last" / "training_history.json").read_text())
    assert set(history["data"]) == {"bool_q"}  # trained on bool_q only

    adapter = root / "adapter_last"
    test = run_cli(
        "test",
        *common,
        "--data.eval_tasks",
        "[xsum, common_gen]",
        "--data.eval_examples_per_task",
        "3",
        "--model.adapter",
        str(adapter),
        "--trainer.default_root_dir",
        str(root / "eval"),
    )
    assert test.returncode == 0, test.stderr[-3000:]
    rows = list(csv.DictReader((root / "eval_results.csv").open()))
    trained = {r["task"]: r["trained"] for r in rows}
    assert trained == {"bool_q": "yes", "xsum": "no", "common_gen": "no"}
    assert {r["metric"] for r in rows if r["task"] == "xsum"} >= {"loss", "rouge_l"}
    markdown = (root / "eval_results.md").read_text()
    seen_part, unseen_part = markdown.split("## Tasks never trained on (data.eval_tasks): ")
    assert "| bool_q |" in seen_part and "xsum" not in seen_part
    assert unseen_part.startswith("common_gen 3 (validation); xsum 3 (validation)")
    assert "| xsum | rouge_l |" in unseen_part and "| bool_q |" not in unseen_part
    card = (adapter / "README.md").read_text()
    assert "Tasks never trained on (data.eval_tasks)" in card and "| xsum | loss |" in card

    (folder,) = (root / "eval" / "lightning_logs").glob("version_*")
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"test/bool_q/loss", "test_unseen/xsum/loss", "test_base_unseen/xsum/loss"} <= tags
    assert not any(t.startswith("test/xsum") for t in tags)


def test_an_unseen_task_may_come_as_a_test_file_alone(tmp_path):
    from lora_lightning.data import FlanDataModule
    from lora_lightning.data.pipeline import split_task

    rows = [{"document": f"Text number {i} about a town.", "summary": f"Town {i}.", "id": str(i)} for i in range(5)]
    path = tmp_path / "xsum_test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = FlanDataModule(tasks=["bool_q"], eval_tasks=["xsum"], data_files={"xsum": {"test": str(path)}}, cache_dir=None)
    examples = dm.eval_examples()
    assert len(examples["xsum"]) == 5 and {e["split"] for e in examples["xsum"]} == {"test"}
    assert all(e["unseen"] for e in examples["xsum"]) and not any(e["unseen"] for e in examples["bool_q"])
    # a trained task needs train rows: a test file alone is a one-line error naming the way out
    with pytest.raises(UserInputError, match="no train rows .* data.eval_tasks"):
        split_task(dm.unseen_specs[0], dm.files["xsum"], dm.settings)
