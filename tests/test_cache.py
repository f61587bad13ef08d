"""The tokenized-data cache: a hit on the second setup, a miss when any key changes."""

import json

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
        "lora_lightning.data.datamodule.build_tokenized", lambda *args: pytest.fail("tokenized again despite the cache")
    )
    with caplog.at_level("INFO"):
        second = setup_dm(tiny_models, tmp_path)
    assert "cache hit" in caplog.text
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
