"""The model a LoRAModule trains: the base loaded, then LoRA added (or a trained adapter attached).

One function, so that the module's ``configure_model`` reads as what happens and the switches that
change the model (gradient checkpointing, ``torch.compile``) sit next to where the model is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lora_lightning.loading import EMBEDDED_MODEL, load_causal_lm, load_tokenizer, resolve_model_path
from lora_lightning.model.adapters import adapter_base, attach_adapter
from lora_lightning.model.lora import apply_lora
from lora_lightning.model.loss import unwrap_causal_lm

LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_bias", "target_modules", "use_rslora", "use_dora")


def build_model(hp: Mapping[str, Any]) -> tuple[Any, Any, str]:
    """(model in train mode, tokenizer, resolved base path) for a LoRAModule's hyperparameters."""
    name = hp["model_name"] or (adapter_base(hp["adapter"]) if hp["adapter"] else EMBEDDED_MODEL)
    base_path = resolve_model_path(name, hp["base_cache_dir"])
    tokenizer = load_tokenizer(hp["adapter"] or base_path, hp["trust_remote_code"])
    model = load_causal_lm(base_path, hp["trust_remote_code"])
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if hp["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hp["adapter"] is not None:
        model = attach_adapter(model, hp["adapter"], trainable=True)
    elif hp["lora"]:
        model = apply_lora(model, *(hp[k] for k in LORA_KEYS))
    if hp["compile"]:
        unwrap_causal_lm(model).base_model.compile()  # in place: the peft wrapper and state dict keep their names
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    rank_zero_info(f"Model {name}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    return model.train(), tokenizer, base_path  # from_pretrained returns eval mode; the Trainer switches per loop
