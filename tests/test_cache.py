"""The tokenized-data cache: a hit on the second setup, a miss when any key changes."""

import json
import os
from pathlib import Path

import pytest

from lora_lightning.data import FlanDataModule


def setup_dm(tiny_models, cache_dir, **kwargs):
    dm = FlanDataModule(
        **{"tokenizer": str(tiny_models["llama"]), "cache_dir": str(cache_dir), "max_examples_per_task": 10, **kwargs}
    )
    dm.setup("fit")
    return dm


def entries(cache_dir):
    return sorted(p.name for p in cache_dir.iterdir() if not p.name.startswith("."))


def test_second_setup_is_a_cache_hit_without_tokenizing(tiny_models, tmp_path, monkeypatch, caplog):
    first = setup_dm(tiny_models, tmp_path)
    assert len(entries(tmp_path)) == 1
    monkeypatch.setattr(
        "lora_lightning.data.pipeline.encode_task_rows", lambda *args: pytest.fail("tokenized again despite the cache")
    )
    with caplog.at_level("INFO"):
        second = setup_dm(tiny_models, tmp_path)
    assert f"Tokenized data: cache hit, loaded {tmp_path / entries(tmp_path)[0]} in " in caplog.text
    assert second.train_set["input_ids"] == first.train_set["input_ids"]
    assert second.val_set["labels"] == first.val_set["labels"]
    assert second.stats == first.stats


@pytest.mark.parametrize(
    "change",
    [
        {"max_length": 100},
        {"seed": 7},
        {"max_examples_per_task": 11},
        {"mixing": "uniform"},
        {"tasks": ["bool_q", "xsum"]},
    ],
)
def test_changing_a_key_tokenizes_into_a_new_entry(tiny_models, tmp_path, change):
    setup_dm(tiny_models, tmp_path)
    setup_dm(tiny_models, tmp_path, **change)
    assert len(entries(tmp_path)) == 2


def test_changed_tokenizer_or_data_file_invalidates(tiny_models, tmp_path):
    rows = [{"question": f"is {i} odd", "answer": i % 2 == 1, "passage": f"{i} is a number."} for i in range(30)]
    data = tmp_path / "boolq.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cache = tmp_path / "cache"
    kwargs = {"tasks": ["bool_q"], "data_files": {"bool_q": str(data)}}
    setup_dm(tiny_models, cache, **kwargs)
    data.write_text("\n".join(json.dumps(r) for r in rows[:20]))
    dm = setup_dm(tiny_models, cache, **kwargs)
    # 20 rows, no validation or test split: 2 held out for selection and 2 for evaluation
    assert len(entries(cache)) == 2 and dm.stats["bool_q"]["available"] == 16
    gpt2 = FlanDataModule(tokenizer=str(tiny_models["gpt2"]), cache_dir=str(cache), max_examples_per_task=10, **kwargs)
    gpt2.setup("fit")
    assert len(entries(cache)) == 2  # the tiny models share one tokenizer: same fingerprint, a hit


def boolq_rows(n: int, word: str = "number") -> str:
    rows = [{"question": f"is {i} odd", "answer": i % 2 == 1, "passage": f"{i} is a {word}."} for i in range(n)]
    return "\n".join(json.dumps(r) for r in rows)


def test_the_key_is_the_file_content_not_its_name_or_time(tiny_models, tmp_path, monkeypatch, caplog):
    """A local Hub-layout file: touched, or copied under another name, it is the same data (a hit, no
    tokenizing); the same size and name with other content is other data (a miss)."""
    data, cache = tmp_path / "boolq.jsonl", tmp_path / "cache"
    data.write_text(boolq_rows(40))
    first = setup_dm(tiny_models, cache, tasks=["bool_q"], data_files={"bool_q": str(data)})
    assert (first.stats["bool_q"]["available"], first.stats["bool_q"]["train"]) == (32, 10)
    with monkeypatch.context() as patched:
        patched.setattr(
            "lora_lightning.data.pipeline.encode_task_rows", lambda *a: pytest.fail("tokenized again despite the cache")
        )
        os.utime(data, (1, 1))  # another time
        copy = tmp_path / "elsewhere.jsonl"
        copy.write_bytes(data.read_bytes())  # another name
        for path in (data, copy):
            caplog.clear()
            with caplog.at_level("INFO"):
                again = setup_dm(tiny_models, cache, tasks=["bool_q"], data_files={"bool_q": str(path)})
            assert "cache hit" in caplog.text and again.train_set["input_ids"] == first.train_set["input_ids"]
    data.write_text(boolq_rows(40).replace("is a number", "is a numbex"))  # same size, other content
    assert data.stat().st_size == copy.stat().st_size
    setup_dm(tiny_models, cache, tasks=["bool_q"], data_files={"bool_q": str(data)})
    assert len(entries(cache)) == 2


def test_tokenized_sets_are_memory_mapped_arrow_files_in_the_entry(tiny_models, tmp_path):
    dm = setup_dm(tiny_models, tmp_path)
    entry = tmp_path / entries(tmp_path)[0]
    files = {Path(f["filename"]).parent for split in (dm.train_set, dm.val_set) for f in split.cache_files}
    assert files == {entry}  # nothing held in memory: every example is read from the entry's files
    assert dm.train_set.features["input_ids"].feature.dtype == "int32"
    lengths = [len(ids) for ids in dm.train_set["input_ids"]]
    assert dm.train_set["length"] == lengths and min(lengths) > 0
    trained = [sum(label != -100 for label in row) for row in dm.train_set["labels"]]
    assert dm.train_set["completion_tokens"] == trained
    assert sum(s["train_completion_tokens"] for s in dm.stats.values()) == sum(trained)


def test_two_processes_tokenize_what_one_does_into_the_entry(tiny_models, tmp_path):
    data = tmp_path / "boolq.jsonl"
    data.write_text(boolq_rows(300))
    kwargs = {"tasks": ["bool_q"], "data_files": {"bool_q": str(data)}, "max_examples_per_task": None}
    two = setup_dm(tiny_models, tmp_path / "two", num_proc=2, **kwargs)
    one = setup_dm(tiny_models, tmp_path / "one", num_proc=1, **kwargs)
    assert two.train_set["input_ids"] == one.train_set["input_ids"] and len(two.train_set) == 240
    assert two.train_set["example_id"] == one.train_set["example_id"]
    shards = sorted(Path(f["filename"]).name for f in two.train_set.cache_files)
    assert shards == ["train-0_00000_of_00002.arrow", "train-0_00001_of_00002.arrow"]


def test_num_proc_default_follows_the_cores_only_for_large_data(monkeypatch):
    from lora_lightning.data.pipeline import NUM_PROC_MIN_ROWS, DataSettings, tokenize_processes

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert tokenize_processes(None, NUM_PROC_MIN_ROWS - 1) == 1  # start-up would not pay back
    assert tokenize_processes(None, NUM_PROC_MIN_ROWS) == 8  # min(cores, 8)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert tokenize_processes(None, 10**6) == 2 and tokenize_processes(3, 10) == 3
    with pytest.raises(ValueError, match=r"data.num_proc must be 1 or more, or null \(set from the cores\), got 0"):
        DataSettings(num_proc=0)
