"""Target modules per architecture, LoRA settings, and the completion-only loss."""

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from lora_lightning.data.tokenization import CausalLMCollator, encode_pairs
from lora_lightning.loading import load_causal_lm
from lora_lightning.model.lora import LoRAConfigError, apply_lora, resolve_target_modules
from lora_lightning.model.loss import completion_loss

EXPECTED = {"gpt2": {"c_attn", "c_proj"}, "gpt_neox": {"query_key_value"}, "llama": {"q_proj", "v_proj"}}


def lora_module_names(model):
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_auto_targets_follow_the_guide_per_architecture(tiny_models, arch):
    model = apply_lora(load_causal_lm(str(tiny_models[arch])), r=4, alpha=8, dropout=0.0)
    assert isinstance(model, PeftModel)
    assert lora_module_names(model) == EXPECTED[arch]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_explicit_and_all_linear_targets(tiny_models):
    model = apply_lora(load_causal_lm(str(tiny_models["llama"])), r=4, target_modules=["k_proj", "o_proj"])
    assert lora_module_names(model) == {"k_proj", "o_proj"}
    model = apply_lora(load_causal_lm(str(tiny_models["llama"])), r=4, target_modules="all-linear")
    assert lora_module_names(model) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert resolve_target_modules("llama", "q_proj, v_proj") == ["q_proj", "v_proj"]


def test_gpt2_conv1d_is_wrapped_transposed(tiny_models):
    model = apply_lora(load_causal_lm(str(tiny_models["gpt2"])), r=4)
    assert model.peft_config["default"].fan_in_fan_out is True


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "lora_r must be a positive integer"),
        ({"r": -3}, "lora_r must be a positive integer"),
        ({"dropout": 1.0}, r"lora_dropout must be in \[0, 1\)"),
        ({"dropout": -0.1}, r"lora_dropout must be in \[0, 1\)"),
        ({"target_modules": ["no_such_module"]}, "cannot apply LoRA"),
    ],
)
def test_bad_lora_settings_are_named(tiny_models, kwargs, message):
    with pytest.raises(LoRAConfigError, match=message):
        apply_lora(load_causal_lm(str(tiny_models["llama"])), **kwargs)


def test_unknown_architecture_asks_for_explicit_targets():
    with pytest.raises(LoRAConfigError, match="set model.target_modules"):
        resolve_target_modules("my_new_arch", "auto")


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_completion_only_loss_equals_the_models_own_loss(tiny_models, tokenizer, arch):
    model = apply_lora(load_causal_lm(str(tiny_models[arch])), r=4, dropout=0.0)
    # Make the adapter non-trivial so LoRA layers matter in the comparison.
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    encoded = encode_pairs(tokenizer, ["Is the sky blue today, friend?", "Name a dog"], ["True", "Rex the dog"], 64)
    batch = CausalLMCollator(tokenizer.eos_token_id)([vars(e) for e in encoded])
    reference = model(**batch).loss  # transformers' own shifted, token-averaged cross-entropy
    fast_sum, count = completion_loss(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk_tokens=3
    )
    full_sum, _ = completion_loss(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"], completion_only_head=False
    )
    assert count == int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(fast_sum / count, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full_sum / count, reference, rtol=1e-5, atol=1e-5)
    fast_sum.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
