"""FlanDataModule on the bundled demo mix and on local Hub-format files."""

import json

import pytest

from conftest import needs_shared_data
from lora_lightning.data import FlanDataModule
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


def test_demo_mix_has_the_shipped_counts_and_a_validation_split(tiny_folder):
    dm = setup_with(tiny_folder, max_length=1024)
    assert dm.task_counts("train") == {"bool_q": 80, "common_gen": 80, "xsum": 40}
    assert dm.task_counts("validation") == {"bool_q": 20, "common_gen": 20, "xsum": 10}
    assert all(s["dropped_too_long"] == 0 for s in dm.stats.values())


def test_cap_per_task_and_seeded_selection(tiny_folder):
    a = setup_with(tiny_folder, max_examples_per_task=7, seed=3)
    b = setup_with(tiny_folder, max_examples_per_task=7, seed=3)
    c = setup_with(tiny_folder, max_examples_per_task=7, seed=4)
    assert a.task_counts("train") == {"bool_q": 7, "common_gen": 7, "xsum": 7}
    assert a.train_set["input_ids"] == b.train_set["input_ids"]
    assert a.train_set["input_ids"] != c.train_set["input_ids"]


def test_long_examples_are_dropped_and_counted(tiny_folder):
    dm = setup_with(tiny_folder, tasks=["xsum"], max_length=48)
    # "Write an article" templates put the whole article in the completion: those cannot fit.
    assert dm.stats["xsum"]["dropped_too_long"] > 0
    assert all(len(ids) <= 48 for split in (dm.train_set, dm.val_set) for ids in split["input_ids"])
    assert dm.stats["xsum"]["train"] + dm.stats["xsum"]["validation"] + dm.stats["xsum"]["dropped_too_long"] == 50


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
    assert dm.task_counts("train") == {"bool_q": 30} and dm.task_counts("validation") == {"bool_q": 10}


def test_real_hub_format_rows_through_the_local_file_path(tiny_folder):
    files = {t: str(needs_shared_data(t)) for t in ("bool_q", "common_gen", "xsum")}
    dm = setup_with(tiny_folder, data_files=files, max_examples_per_task=20, max_length=2048)
    assert dm.task_counts("train") == {"bool_q": 20, "common_gen": 20, "xsum": 20}


@pytest.mark.parametrize("kwargs, error, message", [
    ({"tasks": ["bool_q", "nope"]}, TaskError, "unknown task 'nope'"),
    ({"data_files": {"bool_q": "/no/such/file.jsonl"}}, DataSourceError, "data file '/no/such/file.jsonl' does not exist"),
    ({"data_files": {"xsum": "data.txt"}}, DataSourceError, "not a .jsonl, .json, .csv or .parquet"),
    ({"tasks": ["bool_q"], "data_files": {"xsum": "x.jsonl"}}, ValueError, "not in data.tasks"),
    ({"max_examples_per_task": 0}, ValueError, "must be positive"),
])
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


@pytest.mark.parametrize("content, message", [
    ("", r"task 'paws': data file '.*paws.jsonl' is empty"),
    ('{"id": 1, "sentence1": "a", "sentence2": "b", "label": 1}\n{"id": 2, "sentence1": "a", "sent',
     r"task 'paws': cannot read '.*paws.jsonl': line 2 is not valid JSON"),
    ('{"id": 1, "sentence1": "a", "sentence2": "b", "label": 1}\n{"id": 2, "sentence1": "a", "sentence2": "b", "label": 7}\n',
     r"task 'paws': label 7 in column 'label' is outside the option list \['No', 'Yes'\] \(in .*paws.jsonl\)"),
    ('{"id": 1, "sentence1": "a", "label": 1}\n',
     r"task 'paws': '.*paws.jsonl' lacks column\(s\) sentence2"),
])
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
        assert dm.task_counts("train") == {"paws": 18} and dm.task_counts("validation") == {"paws": 2}


def test_chat_format_trains_only_on_the_assistant_turn(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    from lora_lightning.data.tokenization import IGNORE_INDEX, encode_pairs, render_prompt

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    tok.pad_token = tok.eos_token
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    [ex] = encode_pairs(tok, ["Is it raining?"], ["True"], 64, prompt_format="chat")
    head = render_prompt(tok, "Is it raining?", "chat")
    assert head == "<|user|>Is it raining?<|endoftext|>\n<|assistant|>"
    trained = [i for i, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX]
    assert tok.decode(trained) == "True<|endoftext|>"  # the turn's trailing newline after EOS is not trained
    assert ex.input_ids[-1] == tok.eos_token_id
    assert tok.decode(ex.input_ids) == head + "True<|endoftext|>"


def test_chat_format_needs_a_chat_template(tiny_folder):
    with pytest.raises(ValueError, match="no chat template; use data.prompt_format=plain"):
        setup_with(tiny_folder, prompt_format="chat")
