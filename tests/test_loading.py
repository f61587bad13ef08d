"""Base model resolution: local folders, Hub ids, GGUF files and the embedded default model."""

import os
from pathlib import Path

import pytest
import torch

from lora_lightning.loading import (
    EMBEDDED_MODEL,
    ModelLoadError,
    embedded_gguf_path,
    load_tokenizer,
    resolve_model_path,
)


def test_local_folder_resolves_to_its_absolute_path(tiny_models, monkeypatch):
    monkeypatch.chdir(tiny_models["gpt2"].parent)
    assert resolve_model_path("gpt2") == str(tiny_models["gpt2"])


def test_hub_ids_pass_through_untouched():
    assert resolve_model_path("openai-community/gpt2-medium") == "openai-community/gpt2-medium"
    assert resolve_model_path("gpt2") == "gpt2"


@pytest.mark.parametrize(
    "name, message",
    [
        ("./no/such/model", "does not exist"),
        ("/no/such/dir/model", "does not exist"),
        ("missing.gguf", "GGUF file 'missing.gguf' does not exist"),
    ],
)
def test_missing_local_models_are_named(name, message):
    with pytest.raises(ModelLoadError, match=message):
        resolve_model_path(name)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        resolve_model_path(str(tmp_path))


def test_tokenizer_without_pad_gets_eos_as_pad_and_no_new_token(tiny_models, tokenizer):
    loaded = load_tokenizer(str(tiny_models["gpt2"]))
    assert tokenizer.pad_token is None
    assert loaded.pad_token_id == loaded.eos_token_id
    assert len(loaded) == len(tokenizer)


def test_embedded_model_converts_once_to_a_plain_safetensors_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    try:
        gguf = embedded_gguf_path()
    except ModelLoadError as err:
        pytest.skip(str(err))
    folder = Path(resolve_model_path(EMBEDDED_MODEL, tmp_path))
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left behind
    stamp = os.stat(folder / "model.safetensors").st_mtime_ns
    assert resolve_model_path(EMBEDDED_MODEL, tmp_path) == str(folder)
    assert os.stat(folder / "model.safetensors").st_mtime_ns == stamp  # cached, not converted again

    converted = AutoModelForCausalLM.from_pretrained(folder).eval()  # plain transformers, no gguf
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(str(folder))
    ids = tokenizer("Is the sky blue?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(converted(input_ids=ids).logits, direct(input_ids=ids).logits)
    assert converted.config.model_type == "llama" and tokenizer.eos_token == "<|im_end|>"
