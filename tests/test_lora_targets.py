"""``target_modules: auto`` puts adapters on exactly the attention projections, by full module name."""

import pytest
from conftest import build_model
from peft.tuners.lora import LoraLayer

from lora_lightning.model.lora import apply_lora

LAYERS = range(2)  # conftest's tiny models have two layers
EXPECTED = {
    # Attention only: the fused qkv projection and the attention output projection, never mlp.c_proj.
    "gpt2": {f"transformer.h.{i}.attn.{m}" for i in LAYERS for m in ("c_attn", "c_proj")},
    "gpt_neox": {f"gpt_neox.layers.{i}.attention.query_key_value" for i in LAYERS},
    "llama": {f"model.layers.{i}.self_attn.{m}" for i in LAYERS for m in ("q_proj", "v_proj")},
}


def lora_targets(model):
    """Full names (in the base model) of the modules that received LoRA layers."""
    return {name for name, m in model.get_base_model().named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_auto_targets_are_exactly_the_attention_projections(tokenizer, arch):
    model = apply_lora(build_model(arch, len(tokenizer), tokenizer.eos_token_id), r=4, alpha=8, dropout=0.0)
    assert lora_targets(model) == EXPECTED[arch]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(".mlp." in n for n in trainable)
