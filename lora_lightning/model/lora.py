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

``init_lora_weights`` picks peft's initialisation of the adapter. ``default`` and ``gaussian`` start
with ``lora_B = 0``, so the adapter adds nothing until it trains. ``pissa`` (the top-r singular
vectors of each adapted weight) and ``olora`` (the first r columns of its QR decomposition) start with
a non-zero adapter and subtract it from the base weight instead: the frozen base becomes the
*residual* ``W - scale * B A`` and the wrapped model computes what the original did. The exported
adapter is therefore an update to that residual, not to the original base. peft recomputes the
residual when it loads the adapter onto the original base (``init_lora_weights`` is kept in
``adapter_config.json`` and the SVD/QR of the same weights is the same), so plain
``PeftModel.from_pretrained`` and ``merge`` reproduce the trained model; but the adapter cannot share
a base with other adapters, and ``disable_adapter()`` gives the residual, not the original model.
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


# Our names for peft's ``init_lora_weights`` values; "default" is peft's True (kaiming-uniform A, zero B).
# Only deterministic ones: peft reruns a PiSSA/OLoRA initialisation when it loads the adapter, and the
# residual it makes there must be the one trained against (so no randomised "pissa_niter_N").
INIT_LORA_WEIGHTS: dict[str, bool | str] = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
# Those that move the principal part of each weight into the adapter and leave the residual in the base.
RESIDUAL_INITS = ("pissa", "olora")


class LoRAConfigError(UserInputError):
    """LoRA settings that cannot work; the message names the setting and the allowed values."""


def check_lora_settings(r: int, alpha: float, dropout: float, bias: str, init_lora_weights: str = "default") -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise LoRAConfigError(f"lora_r must be a positive integer, got {r!r}")
    if alpha <= 0:
        raise LoRAConfigError(f"lora_alpha must be positive, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise LoRAConfigError(f"lora_dropout must be in [0, 1), got {dropout!r}")
    if bias not in ("none", "all", "lora_only"):
        raise LoRAConfigError(f"lora_bias must be one of none, all, lora_only; got {bias!r}")
    if init_lora_weights not in INIT_LORA_WEIGHTS:
        raise LoRAConfigError(
            f"init_lora_weights must be one of {', '.join(INIT_LORA_WEIGHTS)}; got {init_lora_weights!r}"
        )


def check_init_fits(init_lora_weights: str, model_type: str, transposed: bool) -> None:
    """peft's OLoRA takes the QR decomposition of the stored weight as if it were (out, in); GPT-2's
    Conv1D stores (in, out), so the adapter would get the wrong shapes or, on a square layer, silently
    change what the model computes. PiSSA transposes first and works there."""
    if init_lora_weights == "olora" and transposed:
        raise LoRAConfigError(
            f"init_lora_weights olora does not support {model_type!r} (peft's OLoRA ignores transposed Conv1D "
            "weights); use default, gaussian or pissa"
        )


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
    init_lora_weights: str = "default",
) -> Any:
    """``model`` wrapped in a peft ``PeftModel`` with one trainable LoRA adapter.

    With ``init_lora_weights`` ``pissa`` or ``olora`` the base weights of the adapted layers are
    changed in place (to the residual, see the module docstring)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers.pytorch_utils import Conv1D

    check_lora_settings(r, alpha, dropout, bias, init_lora_weights)
    targets = resolve_target_modules(model.config.model_type, target_modules)
    transposed = any(isinstance(m, Conv1D) for m in model.modules())
    check_init_fits(init_lora_weights, model.config.model_type, transposed)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias=bias,
        target_modules=targets,
        use_rslora=use_rslora,
        use_dora=use_dora,
        init_lora_weights=INIT_LORA_WEIGHTS[init_lora_weights],
        # GPT-2 stores its linear weights transposed (Conv1D); peft must be told.
        fan_in_fan_out=transposed,
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
