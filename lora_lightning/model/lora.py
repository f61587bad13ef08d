"""Wrapping a base model with peft LoRA, and choosing which modules get adapters.

``target_modules="auto"`` takes the table below (the flan-gpt2 guide's choices), then peft's own
per-architecture table for the rest; ``"all-linear"`` and explicit lists go to peft as they are.

``auto`` adapts the attention projections only:

- GPT-2: ``attn.c_attn`` (fused query/key/value) and ``attn.c_proj`` (attention output), i.e.
  ``transformer.h.N.attn.c_attn`` and ``transformer.h.N.attn.c_proj``. The names are given with
  their ``attn.`` parent because peft matches a bare name as a suffix, and a bare ``c_proj`` would
  also catch the MLP's ``transformer.h.N.mlp.c_proj``.
- GPT-NeoX (Pythia): ``query_key_value``.
- Llama (SmolLM): ``q_proj`` and ``v_proj``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from lora_lightning.errors import UserInputError, first_line

AUTO_TARGET_MODULES: dict[str, list[str]] = {
    # Full suffixes: peft matches "c_proj" against mlp.c_proj as well as attn.c_proj.
    "gpt2": ["attn.c_attn", "attn.c_proj"],
    "gpt_neox": ["query_key_value"],
    "llama": ["q_proj", "v_proj"],
}


class LoRAConfigError(UserInputError):
    """LoRA settings that cannot work; the message names the setting and the allowed values."""


def check_lora_settings(r: int, alpha: float, dropout: float, bias: str) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise LoRAConfigError(f"lora_r must be a positive integer, got {r!r}")
    if alpha <= 0:
        raise LoRAConfigError(f"lora_alpha must be positive, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise LoRAConfigError(f"lora_dropout must be in [0, 1), got {dropout!r}")
    if bias not in ("none", "all", "lora_only"):
        raise LoRAConfigError(f"lora_bias must be one of none, all, lora_only; got {bias!r}")


def resolve_target_modules(model_type: str, target_modules: str | Sequence[str]) -> str | list[str]:
    """The ``target_modules`` peft gets, for ``auto``, ``all-linear`` or an explicit list."""
    if isinstance(target_modules, str) and target_modules not in ("auto", "all-linear"):
        return [m.strip() for m in target_modules.split(",") if m.strip()]
    if target_modules != "auto":
        return target_modules if isinstance(target_modules, str) else list(target_modules)
    if model_type in AUTO_TARGET_MODULES:
        return list(AUTO_TARGET_MODULES[model_type])
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    raise LoRAConfigError(
        f"no automatic LoRA target modules for model type {model_type!r}; "
        "set model.target_modules to a list of module names or 'all-linear'"
    )


def apply_lora(
    model: Any,
    r: int = 16,
    alpha: float = 32,
    dropout: float = 0.1,
    bias: str = "none",
    target_modules: str | Sequence[str] = "auto",
    use_rslora: bool = False,
    use_dora: bool = False,
) -> Any:
    """``model`` wrapped in a peft ``PeftModel`` with one trainable LoRA adapter."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers.pytorch_utils import Conv1D

    check_lora_settings(r, alpha, dropout, bias)
    targets = resolve_target_modules(model.config.model_type, target_modules)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias=bias,
        target_modules=targets,
        use_rslora=use_rslora,
        use_dora=use_dora,
        # GPT-2 stores its linear weights transposed (Conv1D); peft must be told.
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),
    )
    try:
        with warnings.catch_warnings():
            # peft reads transformers' deprecated `is_gradient_checkpointing`; nothing a user can act on.
            warnings.filterwarnings(
                "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
            )
            return get_peft_model(model, config)
    except ValueError as err:
        raise LoRAConfigError(
            f"cannot apply LoRA to {model.config.model_type!r} with target_modules={targets!r}: {first_line(err)}"
        ) from None
