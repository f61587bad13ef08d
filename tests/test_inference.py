"""Generation with a LoRA model: batched with left padding, greedy, stopping at EOS."""

import pytest
import torch

from lora_lightning.loading import ModelLoadError, load_causal_lm, load_tokenizer
from lora_lightning.model import generate, load_lora_model
from lora_lightning.model.adapters import adapter_base
from lora_lightning.model.lora import apply_lora


@pytest.fixture(scope="module")
def saved_adapter(tiny_models, tmp_path_factory):
    model = apply_lora(load_causal_lm(str(tiny_models["gpt2"])), r=4, dropout=0.0)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    load_tokenizer(str(tiny_models["gpt2"])).save_pretrained(folder)
    return folder


def test_batched_generation_equals_one_by_one(saved_adapter):
    model = load_lora_model(None, saved_adapter)
    tokenizer = load_tokenizer(str(saved_adapter))
    prompts = ["Is the sky blue?", "Concepts: dog, ball, park\n\nWrite a sentence.", "Hi"]
    batched = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(t, str) for t in batched)


def test_load_lora_model_uses_the_base_the_adapter_names(saved_adapter, tiny_models):
    assert adapter_base(saved_adapter) == str(tiny_models["gpt2"])
    model = load_lora_model(str(tiny_models["gpt2"]), saved_adapter)
    assert not model.training


def test_adapter_on_the_wrong_base_is_a_clear_error(saved_adapter, tiny_models):
    with pytest.raises(ModelLoadError, match="cannot be loaded onto base"):
        load_lora_model(str(tiny_models["llama"]), saved_adapter)


def test_folder_without_adapter_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="not an adapter folder"):
        load_lora_model(None, tmp_path)
