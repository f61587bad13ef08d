"""FlanDataModule on the bundled demo mix and on local Hub-format files."""

import json
from collections import Counter

import pytest
from conftest import needs_shared_data

from lora_lightning.data import FlanDataModule
from lora_lightning.data.pipeline import split_task
from lora_lightning.data.sources import DataSourceError
from lora_lightning.data.tasks import TaskError


@pytest.fixture
def tiny_folder(tiny_models):
    return str(tiny_models["llama"])


def setup_with(tokenizer_folder, **kwargs):
    """A set-up datamodule using the tiny tokenizer saved in a tiny model folder."""
    dm = FlanDataModule(tokenizer=tokenizer_folder, **{"cache_dir": None, **kwargs})
    dm.setup("fit")
    return dm


def test_demo_mix_holds_out_selection_rows_and_scores_its_validation_split(tiny_folder):
    dm = setup_with(tiny_folder, max_length=1024)
    # the demo files are train (80/80/40) and validation (20/20/10): 10% of train picks the checkpoint,
    # the validation file is the evaluation set the results table scores
    assert Counter(dm.train_set["task"]) == {"bool_q": 72, "common_gen": 72, "xsum": 36}
    assert Counter(dm.val_set["task"]) == {"bool_q": 8, "common_gen": 8, "xsum": 4}
    assert all(s["dropped_too_long"] == 0 for s in dm.stats.values())
    assert {t: (s["selection_split"], s["evaluation_split"], s["evaluation_rows"]) for t, s in dm.stats.items()} == {
        t: ("train (10% held out)", "validation", n) for t, n in (("bool_q", 20), ("common_gen", 20), ("xsum", 10))
    }
    examples = dm.eval_examples()
    assert {t: len(e) for t, e in examples.items()} == {"bool_q": 20, "common_gen": 20, "xsum": 10}
    assert all(e["split"] == "validation" for task in examples.values() for e in task)


def test_cap_per_task_and_seeded_selection(tiny_folder):
    a = setup_with(tiny_folder, max_examples_per_task=7, seed=3)
    b = setup_with(tiny_folder, max_examples_per_task=7, seed=3)
    c = setup_with(tiny_folder, max_examples_per_task=7, seed=4)
    assert Counter(a.train_set["task"]) == {"bool_q": 7, "common_gen": 7, "xsum": 7}
    assert a.train_set["input_ids"] == b.train_set["input_ids"]
    assert a.train_set["input_ids"] != c.train_set["input_ids"]


def test_long_examples_are_dropped_and_counted(tiny_folder):
    dm = setup_with(tiny_folder, tasks=["xsum"], max_length=48)
    # "Write an article" templates put the whole article in the completion: those cannot fit.
    assert dm.stats["xsum"]["dropped_too_long"] > 0
    assert all(len(ids) <= 48 for split in (dm.train_set, dm.val_set) for ids in split["input_ids"])
    assert dm.stats["xsum"]["train"] + dm.stats["xsum"]["validation"] + dm.stats["xsum"]["dropped_too_long"] == 40


def test_batches_are_padded_per_batch(tiny_folder):
    dm = setup_with(tiny_folder, batch_size=4)
    batch = next(iter(dm.val_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == int(lengths.max())
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_local_file_without_validation_split_holds_out_a_fraction(tiny_folder, tmp_path):
    rows = [{"question": f"is {i} even", "answer": i % 2 == 0, "passage": f"{i} is a number."} for i in range(40)]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dm = setup_with(tiny_folder, tasks=["bool_q"], data_files={"bool_q": str(path)}, val_fraction=0.25)
    # train rows only: a quarter for selection, another quarter for evaluation, disjoint by row
    assert Counter(dm.train_set["task"]) == {"bool_q": 20} and Counter(dm.val_set["task"]) == {"bool_q": 10}
    parts = split_task(dm.task_specs[0], dm.files["bool_q"], dm.settings)
    sets = [set(parts.train["question"]), set(parts.selection["question"]), set(parts.evaluation["question"])]
    assert [len(x) for x in sets] == [20, 10, 10] and len(set.union(*sets)) == 40
    assert parts.names == {"selection": "train (25% held out)", "evaluation": "train (another 25% held out)"}
    assert len(dm.eval_examples()["bool_q"]) == 10


def test_real_hub_format_rows_through_the_local_file_path(tiny_folder):
    files = {t: str(needs_shared_data(t)) for t in ("bool_q", "common_gen", "xsum")}
    dm = setup_with(tiny_folder, data_files=files, max_examples_per_task=20, max_length=2048)
    assert Counter(dm.train_set["task"]) == {"bool_q": 20, "common_gen": 20, "xsum": 20}


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"tasks": ["bool_q", "nope"]}, TaskError, "unknown task 'nope'"),
        (
            {"data_files": {"bool_q": "/no/such/file.jsonl"}},
            DataSourceError,
            "data file '/no/such/file.jsonl' does not exist",
        ),
        ({"data_files": {"xsum": "data.txt"}}, DataSourceError, "not a .jsonl, .json, .csv or .parquet"),
        ({"tasks": ["bool_q"], "data_files": {"xsum": "x.jsonl"}}, ValueError, "not in data.tasks"),
        ({"max_examples_per_task": 0}, ValueError, "must be positive"),
    ],
)
def test_bad_data_settings_fail_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        FlanDataModule(**kwargs)


def test_missing_column_names_task_file_and_column(tiny_folder, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "passage": "p"}) + "\n")
    with pytest.raises(DataSourceError, match=r"task 'bool_q': .*bad.jsonl' lacks column\(s\) answer"):
        setup_with(tiny_folder, tasks=["bool_q"], data_files={"bool_q": str(path)})


def test_task_without_demo_data_says_how_to_get_data(tiny_folder):
    with pytest.raises(DataSourceError, match="no bundled demo data.*data.source=hub"):
        setup_with(tiny_folder, tasks=["anli"])


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", r"task 'paws': data file '.*paws.jsonl' is empty"),
        (
            '{"id": 1, "sentence1": "a", "sentence2": "b", "label": 1}\n{"id": 2, "sentence1": "a", "sent',
            r"task 'paws': cannot read '.*paws.jsonl': line 2 is not valid JSON",
        ),
        (
            '{"id": 1, "sentence1": "a", "sentence2": "b", "label": 1}\n'
            '{"id": 2, "sentence1": "a", "sentence2": "b", "label": 7}\n',
            r"task 'paws': label 7 in column 'label' is outside the option list \['No', 'Yes'\] \(in .*paws.jsonl\)",
        ),
        ('{"id": 1, "sentence1": "a", "label": 1}\n', r"task 'paws': '.*paws.jsonl' lacks column\(s\) sentence2"),
    ],
)
def test_bad_data_names_task_file_and_problem(tiny_folder, tmp_path, content, message):
    path = write(tmp_path / "paws.jsonl", content)
    with pytest.raises((DataSourceError, TaskError), match=message):
        setup_with(tiny_folder, tasks=["paws"], data_files={"paws": {"train": path, "validation": path}})


def test_csv_and_parquet_files_load_like_jsonl(tiny_folder, tmp_path):
    import datasets

    rows = [{"id": i, "sentence1": f"s{i}", "sentence2": f"t{i}", "label": i % 2} for i in range(20)]
    ds = datasets.Dataset.from_list(rows)
    ds.to_csv(tmp_path / "paws.csv", index=False)
    ds.to_parquet(tmp_path / "paws.parquet")
    for name in ("paws.csv", "paws.parquet"):
        dm = setup_with(tiny_folder, tasks=["paws"], data_files={"paws": str(tmp_path / name)})
        assert Counter(dm.train_set["task"]) == {"paws": 16} and Counter(dm.val_set["task"]) == {"paws": 2}


def test_chat_format_trains_only_on_the_assistant_turn(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    from lora_lightning.data.tokenization import IGNORE_INDEX, encode_pairs
    from lora_lightning.prompts import render_prompt

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    tok.pad_token = tok.eos_token
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    [ex] = encode_pairs(tok, ["Is it raining?"], ["True"], 64, prompt_format="chat")
    head = render_prompt(tok, "Is it raining?", "chat")
    assert head == "<|user|>Is it raining?<|endoftext|>\n<|assistant|>"
    trained = [i for i, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX]
    assert tok.decode(trained) == "True<|endoftext|>"  # the turn's trailing newline after EOS is not trained
    assert ex.input_ids[-1] == tok.eos_token_id
    assert tok.decode(ex.input_ids) == head + "True<|endoftext|>"


def test_chat_format_needs_a_chat_template(tiny_folder):
    with pytest.raises(
        ValueError, match="prompt_format is chat but the tokenizer has no chat template; use plain or auto"
    ):
        setup_with(tiny_folder, prompt_format="chat")
