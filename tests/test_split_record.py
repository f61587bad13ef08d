"""Evaluation rows are checked, not assumed: the adapter records how its splits were made, ``test``
and ``validate`` stop when the current settings would score other rows, and grouped tasks are carved
by group (no held-out common_gen row shares its concept set with a training row)."""

import json
import re
import shutil
from types import SimpleNamespace

import pytest
from conftest import DEMO, REPO, needs_shared_data, run_cli

from lora_lightning import FlanDataModule
from lora_lightning.callbacks.evaluation_report import EvaluationReport
from lora_lightning.data.pipeline import split_task
from lora_lightning.errors import UserInputError

CONFIG = str(REPO / "configs" / "default.yaml")


def bool_q_file(folder, n: int = 30):
    """A train file only: selection and evaluation are both carved out of it (10% each)."""
    rows = [{"question": f"is {i} odd", "answer": i % 2 == 1, "passage": f"{i} is a number."} for i in range(n)]
    path = folder / "boolq.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def fit_datamodule(tiny_models, data, **kwargs) -> FlanDataModule:
    dm = FlanDataModule(
        tasks=["bool_q"],
        data_files={"bool_q": str(data)},
        tokenizer=str(tiny_models["llama"]),
        cache_dir=None,
        **kwargs,
    )
    dm.setup("fit")
    return dm


# -- the record ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """A short CLI fit on a carved bool_q file; its adapter and the arguments a matching test takes."""
    root = tmp_path_factory.mktemp("splits")
    data = bool_q_file(root)
    common = ["--config", CONFIG, "--model.model_name", str(tiny_models["llama"]), "--data.tasks", "[bool_q]"]
    common += ["--data.data_files", f"{{bool_q: {data}}}", "--data.cache_dir", str(root / "cache")]
    common += ["--trainer.precision", "32-true"]
    done = run_cli(
        "fit",
        *common,
        "--model.lora_r",
        "4",
        "--trainer.max_steps",
        "1",
        "--samples.samples_per_task",
        "0",
        "--trainer.default_root_dir",
        str(root / "run"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    adapter = root / "run" / "adapter_last"
    test_args = [*common, "--model.adapter", str(adapter), "--trainer.default_root_dir", str(root / "eval")]
    return SimpleNamespace(root=root, adapter=adapter, test_args=test_args)


def test_history_records_seed_fractions_and_row_hashes(trained):
    history = json.loads((trained.adapter / "training_history.json").read_text())
    record = history["splits"]
    assert (record["seed"], record["val_fraction"], record["source"]) == (42, 0.1, "demo")
    assert record["max_val_examples_per_task"] == 200
    digests = record["tasks"]["bool_q"]
    # 30 rows: 3 held out for selection, 3 for evaluation, 24 to train on
    assert {split: d["rows"] for split, d in digests.items()} == {"train": 24, "selection": 3, "evaluation": 3}
    hashes = [d["hash"] for d in digests.values()]
    assert all(re.fullmatch("[0-9a-f]{64}", h) for h in hashes) and len(set(hashes)) == 3
    assert "split_rows" not in history["data"]["bool_q"]  # the counts stay as they were


def test_same_settings_same_hashes_and_another_seed_other_carved_rows(tiny_models, tmp_path):
    data = bool_q_file(tmp_path)
    first = fit_datamodule(tiny_models, data).describe()["splits"]["tasks"]["bool_q"]
    again = fit_datamodule(tiny_models, data).describe()["splits"]["tasks"]["bool_q"]
    other = fit_datamodule(tiny_models, data, seed=7).describe()["splits"]["tasks"]["bool_q"]
    assert again == first
    assert all(other[split]["hash"] != first[split]["hash"] for split in ("train", "selection", "evaluation"))
    assert all(other[split]["rows"] == first[split]["rows"] for split in ("train", "selection", "evaluation"))


# -- the check -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_test_with_another_seed_on_a_carved_split_stops_in_one_line(trained):
    done = run_cli("test", *trained.test_args, "--data.seed", "7")
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("lora-lightning: error: task 'bool_q' would be scored on 3 rows other than")
    assert errors[0].endswith("pass --data.seed 42 as in training")
    assert not (trained.root / "eval_results.md").exists()


@pytest.mark.slow
def test_lm_eval_tasks_of_an_adapter_under_another_seed_stops_and_writes_nothing(trained, tmp_path):
    out = tmp_path / "tasks"
    done = run_cli("lm-eval-tasks", str(out), *trained.test_args, "--data.seed", "7")
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].endswith("pass --data.seed 42 as in training")
    assert not out.exists()


@pytest.mark.slow
def test_test_with_the_training_settings_scores_the_recorded_rows(trained):
    done = run_cli("test", *trained.test_args, "--data.eval_examples_per_task", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Evaluation rows checked: those held out when {trained.adapter} was trained" in done.stderr
    table = (trained.adapter.parent / "eval_results.md").read_text()
    # 2 of the 3 rows held out for evaluation in training (the carve is capped at the 2 scored: a subset)
    assert "bool_q 2 (train (another 2 rows held out)). Trained on: bool_q 24 examples of 24 training rows" in table

    with_base = (trained.adapter.parent / "eval_results.csv").read_text().splitlines()
    done = run_cli("test", *trained.test_args, "--data.eval_examples_per_task", "2", "--model.score_base", "false")
    assert done.returncode == 0, done.stderr[-3000:]
    alone = (trained.adapter.parent / "eval_results.csv").read_text().splitlines()
    # the adapter alone: no base column, no delta, the same adapter values as with the base scored
    assert alone[0] == "task,metric,adapter,trained" and with_base[0].startswith("task,metric,base,adapter,delta")
    adapter_values = [line.split(",")[3] for line in with_base[1:]]
    assert [line.split(",")[2] for line in alone[1:]] == adapter_values


def test_validate_with_another_fraction_or_other_data_stops(tiny_models, tmp_path):
    data = bool_q_file(tmp_path)
    record = fit_datamodule(tiny_models, data).describe()["splits"]
    assert fit_datamodule(tiny_models, data).check_split_record(record, "A") is True
    with pytest.raises(UserInputError, match=r"pass --data.val_fraction 0.1 as in training$"):
        fit_datamodule(tiny_models, data, val_fraction=0.2).check_split_record(record, "A")
    data.write_text(data.read_text().replace("is a number", "is a whole number"))
    with pytest.raises(UserInputError, match=r"its data changed since training") as err:
        fit_datamodule(tiny_models, data).check_split_record(record, "A")
    assert "\n" not in str(err.value)


def test_a_task_with_its_own_evaluation_split_passes_under_another_seed(tiny_models):
    """The demo's bool_q is scored on its validation split: another seed orders it otherwise, same rows."""
    kwargs = {"tasks": ["bool_q"], "tokenizer": str(tiny_models["llama"]), "cache_dir": None}
    dm = FlanDataModule(**kwargs)
    dm.setup("fit")
    assert FlanDataModule(**kwargs, seed=7).check_split_record(dm.describe()["splits"], "A") is True


def test_an_adapter_without_the_record_is_warned_not_stopped(tiny_models, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "training_history.json").write_text(json.dumps({"data": {"bool_q": {}}}))  # an older adapter
    dm = fit_datamodule(tiny_models, bool_q_file(tmp_path))
    module = SimpleNamespace(hparams={"adapter": str(adapter)})
    with pytest.warns(UserWarning, match="does not record how its splits were made"):
        EvaluationReport().setup(SimpleNamespace(datamodule=dm), module, "test")


# -- grouped rows are carved by group --------------------------------------------------------------


def grouped_common_gen(folder):
    """The demo's common_gen training rows with several references per concept set (1 to 4, as the
    real data has), as a single train file: both held-out sets are carved out of it."""
    rows = []
    for i, line in enumerate((DEMO / "common_gen" / "train.jsonl").read_text().splitlines()):
        row = json.loads(line)
        rows += [{**row, "target": f"{row['target']} ({k})"} for k in range(1 + i % 4)]
    path = folder / "common_gen.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def concept_sets(rows) -> set:
    return {tuple(sorted(r["concepts"])) for r in rows}


def assert_no_concept_set_shared(dm: FlanDataModule) -> None:
    parts = split_task(dm.task_specs[0], dm.files.get("common_gen"), dm.settings)
    train, selection, evaluation = (concept_sets(p) for p in (parts.train, parts.selection, parts.evaluation))
    assert selection and evaluation
    assert not train & selection and not train & evaluation and not selection & evaluation
    # each evaluation example is a whole concept set, with every reference it has in the data
    held = {}
    for row in parts.evaluation:
        held.setdefault(tuple(sorted(row["concepts"])), set()).add(row["target"])
    for example in dm.eval_examples()["common_gen"]:
        assert set(example["references"]) == held[tuple(sorted(example["concepts"]))]


def test_carved_common_gen_splits_share_no_concept_set(tiny_models, tmp_path):
    data = grouped_common_gen(tmp_path)
    dm = FlanDataModule(tasks=["common_gen"], data_files={"common_gen": str(data)}, tokenizer=str(tiny_models["llama"]))
    assert_no_concept_set_shared(dm)


def test_carved_selection_of_real_common_gen_rows_shares_no_concept_set(tiny_models, tmp_path):
    real = needs_shared_data("common_gen")  # 299 rows, 73 concept sets of 1 to 6 references
    shutil.copy(real, tmp_path / "train.jsonl")
    files = {"common_gen": {"train": str(tmp_path / "train.jsonl")}}
    dm = FlanDataModule(tasks=["common_gen"], data_files=files, tokenizer=str(tiny_models["llama"]))
    assert_no_concept_set_shared(dm)


def test_too_few_groups_to_carve_is_one_line(tiny_models, tmp_path):
    rows = [{"concept_set_idx": 0, "concepts": ["a", "b"], "target": f"a b {i}"} for i in range(30)]
    data = tmp_path / "one_set.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    dm = FlanDataModule(tasks=["common_gen"], data_files={"common_gen": str(data)}, tokenizer=str(tiny_models["llama"]))
    with pytest.raises(UserInputError, match="has 30 training rows in 1 groups of concept_set_idx, too few"):
        split_task(dm.task_specs[0], dm.files["common_gen"], dm.settings)


# -- carves are capped by the counts used ----------------------------------------------------------


def test_carve_takes_only_the_rows_selection_and_evaluation_use(tiny_models, tmp_path):
    """5,000 training rows only: 10% would be 500 each, but 200 selection rows are used
    (max_val_examples_per_task) and 100 evaluation rows scored (eval_examples_per_task): only those
    are held out, every other row trains; uncapped, the fraction holds."""
    data = bool_q_file(tmp_path, 5000)
    dm = fit_datamodule(tiny_models, data, max_examples_per_task=20)
    record = dm.describe()["splits"]
    assert {s: d["rows"] for s, d in record["tasks"]["bool_q"].items()} == {
        "train": 4700,
        "selection": 200,
        "evaluation": 100,
    }
    assert record["carve_caps"] == {"max_val_examples_per_task": 200, "eval_examples_per_task": 100}
    assert dm.stats["bool_q"]["available"] == 4700 and dm.stats["bool_q"]["validation"] == 200
    assert dm.stats["bool_q"]["evaluation_split"] == "train (another 100 rows held out)"
    parts = split_task(dm.task_specs[0], dm.files["bool_q"], dm.settings)
    sets = [set(parts.train["question"]), set(parts.selection["question"]), set(parts.evaluation["question"])]
    assert [len(x) for x in sets] == [4700, 200, 100] and len(set.union(*sets)) == 5000  # disjoint, all used
    assert {e["reference"] for e in dm.eval_examples()["bool_q"]} <= {"True", "False"}
    assert len(dm.eval_examples()["bool_q"]) == 100

    uncapped = FlanDataModule(
        tasks=["bool_q"], data_files={"bool_q": str(data)}, max_val_examples_per_task=None, eval_examples_per_task=None
    )
    parts = split_task(uncapped.task_specs[0], uncapped.files["bool_q"], uncapped.settings)
    assert (len(parts.train), len(parts.selection), len(parts.evaluation)) == (4000, 500, 500)
    assert parts.names == {"selection": "train (10% held out)", "evaluation": "train (another 10% held out)"}


def checker(data, **kwargs) -> FlanDataModule:
    """A datamodule with these settings, only to check a record (no tokenizer needed)."""
    return FlanDataModule(tasks=["bool_q"], data_files={"bool_q": str(data)}, cache_dir=None, **kwargs)


def test_test_with_other_caps_scores_a_subset_of_the_held_out_rows_or_stops(tiny_models, tmp_path):
    data = bool_q_file(tmp_path, 5000)
    record = fit_datamodule(tiny_models, data, max_examples_per_task=20).describe()["splits"]
    assert checker(data).check_split_record(record, "A") is True
    # fewer evaluation examples: a subset of the 100 held out, scored
    fewer = checker(data, eval_examples_per_task=40)
    assert fewer.check_split_record(record, "A") is True
    held = set(split_task(fewer.task_specs[0], fewer.files["bool_q"], checker(data).settings).evaluation["question"])
    scored = set(split_task(fewer.task_specs[0], fewer.files["bool_q"], fewer.settings).evaluation["question"])
    assert len(scored) == 40 and scored < held
    # more would reach rows it trained on; another selection cap moves the evaluation rows
    for kwargs, flag in [
        ({"eval_examples_per_task": 150}, "--data.eval_examples_per_task 100 (or fewer)"),
        ({"eval_examples_per_task": None}, "--data.eval_examples_per_task 100 (or fewer)"),
        ({"max_val_examples_per_task": 100}, "--data.max_val_examples_per_task 200"),
    ]:
        with pytest.raises(
            UserInputError, match=rf"not all among the 100 held out .*pass {re.escape(flag)} as in"
        ) as err:
            checker(data, **kwargs).check_split_record(record, "A")
        assert "\n" not in str(err.value)
    with pytest.raises(UserInputError, match=r"pass --data.seed 42 as in training$"):
        checker(data, seed=7).check_split_record(record, "A")


def test_a_record_without_caps_was_carved_by_the_fraction_alone(tiny_models, tmp_path):
    """An adapter of an older version (its carve took 10% whatever the counts used) records no caps:
    the check makes that carve, and the capped one of the current defaults is refused."""
    data = bool_q_file(tmp_path, 5000)
    old = fit_datamodule(
        tiny_models, data, max_examples_per_task=20, max_val_examples_per_task=None, eval_examples_per_task=None
    ).describe()["splits"]
    del old["carve_caps"]
    old["max_val_examples_per_task"] = 200  # as the older version recorded it (it did not cap the carve)
    assert old["tasks"]["bool_q"]["evaluation"]["rows"] == 500
    flags = "--data.max_val_examples_per_task null --data.eval_examples_per_task null"
    with pytest.raises(UserInputError, match=re.escape(f"pass {flags} as in training")):
        checker(data).check_split_record(old, "A")
    assert checker(data, max_val_examples_per_task=None, eval_examples_per_task=None).check_split_record(old, "A")


def test_capped_carve_of_common_gen_holds_out_whole_groups(tiny_models, tmp_path):
    """Grouped rows are capped in groups: 5 concept sets for selection, 4 for evaluation (10% would be
    8 of the 80), none shared with training."""
    data = grouped_common_gen(tmp_path)
    dm = FlanDataModule(
        tasks=["common_gen"],
        data_files={"common_gen": str(data)},
        tokenizer=str(tiny_models["llama"]),
        max_val_examples_per_task=5,
        eval_examples_per_task=4,
    )
    parts = split_task(dm.task_specs[0], dm.files["common_gen"], dm.settings)
    assert (len(concept_sets(parts.selection)), len(concept_sets(parts.evaluation))) == (5, 4)
    assert len(concept_sets(parts.train)) == 80 - 9
    assert parts.names["evaluation"] == "train (another 4 concept_set_idx groups held out)"
    assert_no_concept_set_shared(dm)
    assert len(dm.eval_examples()["common_gen"]) == 4
