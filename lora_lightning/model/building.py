"""The model a LoRAModule trains: the base loaded, then LoRA added (or a trained adapter attached).

One function, so that the module's ``configure_model`` reads as what happens and the switches that
change the model (base dtype, gradient checkpointing, NEFTune) sit next to where the model is made.
(``torch.compile`` is applied by ``configure_model`` for ``fit`` only: model.compiling.)

With LoRA the frozen base is loaded in half precision when the Trainer computes in it
(``base_dtype: auto``: bfloat16 under ``bf16-mixed``/``bf16-true``, float16 under ``16-mixed``), so
its weights take half the memory; what trains (the adapter, and any bias ``lora_bias`` opens) stays
float32, and so do its gradients, the optimizer state and the exported adapter. Under ``bf16-true``
(``16-true``) Lightning casts the whole module to the half dtype; the LoRA weights go back to float32
(``LoRAModule.to``: :func:`adapters_to_float32`) before the optimizer is made, so the adapter, its
gradients, its AdamW state and the export are float32 there too, while a bias ``lora_bias`` opens
trains in the half dtype (no autocast there to mix it with its half-precision layer).

``init_lora_weights`` ``pissa``/``olora`` rewrite the adapted base weights to the residual in the base
dtype (peft computes it in float32 and casts back): under a half-precision base that residual is
rounded once more, by about the half-precision rounding of the weight itself. NEFTune
(``neftune_noise_alpha``) is a hook on the input embeddings that adds noise in training mode only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from lora_lightning.errors import UserInputError
from lora_lightning.loading import EMBEDDED_MODEL, load_causal_lm, resolve_model_path
from lora_lightning.model.adapters import adapter_base
from lora_lightning.model.lora import RESIDUAL_INITS, apply_lora
from lora_lightning.model.neftune import add_neftune
from lora_lightning.model.peft_method import apply_peft_method
from lora_lightning.model.quantization import prepare_quantized, quantization_config, quantized_summary
from lora_lightning.model.residual_base import RewrittenWeights, attach_keeping_base
from lora_lightning.model.settings import LoraSettings, ModelSettings

BASE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_base_dtype(base_dtype: str, lora: bool, precision: str | None) -> str:
    """The dtype the base is loaded in: ``base_dtype``, or for ``auto`` the Trainer's half precision
    (bfloat16 for ``bf16-*``, float16 for ``16-*``) when a LoRA adapter trains on a frozen base, else float32."""
    if base_dtype not in BASE_DTYPES:
        raise UserInputError(f"model.base_dtype must be one of {', '.join(BASE_DTYPES)}; got {base_dtype!r}")
    if base_dtype != "auto":
        if base_dtype != "float32" and not lora:
            raise UserInputError(
                f"model.base_dtype {base_dtype} needs LoRA: full fine-tuning trains every base weight, and "
                "those stay float32 (use trainer.precision bf16-true for pure half-precision training)"
            )
        return base_dtype
    if lora and str(precision).startswith("bf16"):
        return "bfloat16"
    if lora and str(precision).startswith("16"):
        return "float16"
    return "float32"


def trainable_to_float32(model: Any) -> None:
    """What trains in float32: peft already keeps LoRA weights so; a bias ``lora_bias`` opens is a base
    weight. A linear layer's bias alone goes to float32 (autocast runs the matmul in half precision
    anyway); any other module with a trained weight (a norm's bias) goes to float32 whole, since a norm
    takes a half-precision input only with weight and bias of one dtype."""
    from transformers.pytorch_utils import Conv1D

    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.is_floating_point() and p.dtype != torch.float32]
        if any(p.requires_grad for p in own):
            linear = isinstance(module, (torch.nn.Linear, Conv1D))
            for p in own:
                if p.requires_grad or not linear:
                    p.data = p.data.float()


def adapters_to_float32(model: Any) -> None:
    """Casts every adapter's weights (LoRA A/B, DoRA magnitudes) back to float32 with peft's own
    helper, after a ``.to(half dtype)`` of the whole model: Lightning's ``bf16-true``/``16-true`` do
    that. peft's LoRA layers cast their input to the adapter's dtype and the result back to the
    base's, so the forward needs nothing else; other trained weights (biases ``lora_bias`` opens)
    stay in the half dtype, as the base layers they belong to compute in it with no autocast."""
    from peft.tuners.tuners_utils import cast_adapter_dtype

    for name in getattr(model, "peft_config", {}):
        cast_adapter_dtype(model, name)


def new_lora(model: Any, lora: LoraSettings) -> Any:
    """``model`` with a fresh LoRA adapter; PiSSA/OLoRA changing the base is said once."""
    model = apply_lora(
        model,
        lora.r,
        lora.alpha,
        lora.dropout,
        lora.bias,
        lora.target_modules,
        lora.use_rslora,
        lora.use_dora,
        lora.init_lora_weights,
    )
    if lora.init_lora_weights in RESIDUAL_INITS:
        rank_zero_info(
            f"init_lora_weights {lora.init_lora_weights}: the adapted base weights are now the residual "
            "W - scale * B A; the adapter fits that residual (peft rebuilds it when loading the adapter)"
        )
    return model


def load_base(
    base_path: str,
    settings: ModelSettings,
    dtype: str,
    precision: str | None,
    device: torch.device | None,
    sharded: bool = False,
) -> Any:
    """The frozen base in ``dtype``; with ``model.quantization`` its linear layers quantized, on
    ``device`` (a CUDA device quantizes as it loads); a base FSDP2 will shard (``sharded``) stores its
    4-bit weights in ``dtype`` too."""
    kind, remote = settings.quantization, settings.trust_remote_code
    attention = {"attn_implementation": settings.attn_implementation} if settings.attn_implementation else {}
    if not kind:
        return load_causal_lm(base_path, remote, dtype=dtype, **attention)
    config = quantization_config(kind, precision, getattr(torch, dtype) if sharded else None)
    on_device = {"device_map": {"": device}} if device is not None and device.type != "cpu" else {}
    model = load_causal_lm(base_path, remote, dtype, quantization_config=config, **on_device, **attention)
    prepare_quantized(model, settings.gradient_checkpointing)
    return model


@dataclass
class BuiltModel:
    """What :func:`build_model` hands the module: the model in train mode, the resolved base path (what
    the adapter names as its base), and the base weights an adapter's initialisation rewrote (the
    "base" column of ``test`` puts them back: :mod:`.residual_base`)."""

    model: Any
    base_path: str
    rewritten: RewrittenWeights | None = None


def base_name(settings: ModelSettings) -> str:
    """The base model: ``model_name``, else the one the adapter names, else the embedded model."""
    return settings.model_name or (adapter_base(settings.adapter) if settings.adapter else EMBEDDED_MODEL)


def build_model(
    settings: ModelSettings,
    pad_token_id: int | None,
    precision: str | None = None,
    device: torch.device | None = None,
    sharded: bool = False,
) -> BuiltModel:
    """The model of ``settings``: for the Trainer's ``precision`` (which ``base_dtype: auto`` follows),
    its device (where a quantized base is quantized), and whether FSDP2 will shard it; generation pads
    with the tokenizer's ``pad_token_id``."""
    name, adapter = base_name(settings), settings.adapter
    dtype = resolve_base_dtype(settings.base_dtype, settings.trains_adapter, precision)
    base_path = resolve_model_path(name, settings.base_cache_dir)
    model = load_base(base_path, settings, dtype, precision, device, sharded)
    model.generation_config.pad_token_id = pad_token_id
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    rewritten = None
    if adapter is not None:
        model, rewritten = attach_keeping_base(model, adapter, trainable=True)  # PiSSA/OLoRA: the base kept
    elif settings.peft_config is not None:
        model = apply_peft_method(model, settings.peft_config)
    elif settings.lora is not None:
        model = new_lora(model, settings.lora)
    trainable_to_float32(model)
    if settings.neftune_noise_alpha is not None:
        add_neftune(model, settings.neftune_noise_alpha)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    dtypes = f"frozen base in {dtype}, trained weights in float32" if settings.trains_adapter else "float32"
    if settings.quantization:
        layers, size = quantized_summary(model)
        dtypes = f"{layers} base linear layers in {settings.quantization} ({size / 2**20:.1f} MiB), the rest in "
        dtypes += f"{dtype}; trained weights in float32"
    rank_zero_info(
        f"Model {name}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%); {dtypes}"
    )
    return BuiltModel(model.train(), base_path, rewritten)  # from_pretrained gives eval mode; the Trainer switches
