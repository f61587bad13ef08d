"""A quantized frozen base for QLoRA: bitsandbytes 4-bit (NF4 or FP4) or 8-bit linear layers.

``model.quantization nf4`` loads the base through transformers' ``BitsAndBytesConfig``: every
linear layer of the decoder (GPT-2's ``Conv1D`` too, transposed by transformers) becomes a
bitsandbytes ``Linear4bit`` holding packed 4-bit weights, with double quantization (the block
scales quantized again: about 0.37 bits a weight saved) and compute in the Trainer's dtype
(bfloat16 under ``bf16-*``, float16 under ``16-*``, else float32). ``int8`` gives ``Linear8bitLt``
(LLM.int8(), which computes in float16). The LoRA layers, their gradients, the optimizer state and
the exported adapter stay float32, as over a half-precision base.

The weights bitsandbytes leaves alone (embeddings, norms, biases, the output head) load in the
base dtype (``model.base_dtype``: bfloat16 under ``bf16-mixed``), as over an unquantized
half-precision base, so evaluation and generation outside autocast see one dtype; norms still
compute in float32 (``LayerNorm`` under autocast, ``RMSNorm`` in its own code). Of what peft's
``prepare_model_for_kbit_training`` does, training needs only this: with gradient checkpointing,
the input embeddings' output requires grad (reentrant checkpointing needs it; the non-reentrant
checkpointing this project uses does no harm with it). Its float32 copy of every non-quantized
weight only costs memory (measured in docs/performance.md), so it is left out.

``model.compile`` works over a quantized base: bitsandbytes (>= 0.50) registers its matmuls as torch
operators with shape functions, so dynamo traces a block through them without a graph break, and
inductor fuses the rest of the block as over a bfloat16 base (the compiled block's loss and LoRA
gradients equal the eager block's: tests/test_qlora.py).

bitsandbytes is an optional extra (``pip install 'lora-lightning[qlora]'``; ``make install``
installs it). Its layers run on CUDA and on CPU (bitsandbytes >= 0.50). Nothing is downloaded at
run time: bitsandbytes is imported so that it cannot fetch Hub kernels
(:func:`~lora_lightning.offline_imports.import_bitsandbytes`).
"""

from __future__ import annotations

from typing import Any

import torch

from lora_lightning.errors import UserInputError
from lora_lightning.offline_imports import import_bitsandbytes

QUANTIZATIONS = ("nf4", "fp4", "int8")
EXTRA = "pip install 'lora-lightning[qlora]' (or make install)"


class QuantizationError(UserInputError):
    """A quantized base that cannot be built as asked; the message says what to do."""


def check_quantization(kind: str | None, lora: bool) -> None:
    """One line and stop for a quantization this run cannot have, before anything loads."""
    if kind is None:
        return
    if kind not in QUANTIZATIONS:
        raise QuantizationError(f"model.quantization must be one of {', '.join(QUANTIZATIONS)} or null; got {kind!r}")
    if not lora:
        raise QuantizationError(
            f"model.quantization {kind} needs LoRA (model.lora true or model.adapter): a quantized weight "
            "cannot be trained, and full fine-tuning trains every weight"
        )
    try:
        import_bitsandbytes()
    except ImportError:
        raise QuantizationError(f"model.quantization {kind} needs bitsandbytes: {EXTRA}") from None


def compute_dtype(precision: str | None) -> torch.dtype:
    """The dtype quantized layers compute in: the Trainer's half precision, else float32."""
    text = str(precision)
    if text.startswith("bf16"):
        return torch.bfloat16
    if text.startswith("16"):
        return torch.float16
    return torch.float32


def quantization_config(kind: str, precision: str | None, storage: torch.dtype | None = None) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``kind``: 4-bit with double quantization, or 8-bit.

    ``storage``: the dtype the packed 4-bit weights are stored as (bitsandbytes' default is uint8).
    FSDP2 (configs/fsdp.yaml) shards a 4-bit base stored in the dtype of the rest of the model, as
    the FSDP-QLoRA recipe does; the bytes are the same, the element count is divided by its size."""
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=kind,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(precision),
        bnb_4bit_quant_storage=storage or torch.uint8,
    )


def is_quantized_weight(p: Any) -> bool:
    """A bitsandbytes weight (``Params4bit`` or ``Int8Params``): packed integers, never trained."""
    return type(p).__name__ in ("Params4bit", "Int8Params")


def prepare_quantized(model: Any, gradient_checkpointing: bool) -> None:
    """What training on a quantized base needs of peft's ``prepare_model_for_kbit_training``: with
    gradient checkpointing, the input embeddings' output requires grad. (Its float32 copy of every
    non-quantized weight is left out: see the module docstring.) On CPU, 4-bit layers keep the
    layout they train with through evaluation, and the checkpoint file is let go
    (:func:`release_checkpoint_pages`)."""
    release_checkpoint_pages(model)
    if gradient_checkpointing:
        model.enable_input_require_grads()
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            # bitsandbytes 0.50 repacks a 4-bit weight for its CPU inference kernel at the first eval
            # forward and keeps that layout: later training steps then run the inference kernel (no
            # gradient path; an in-place bias add that autograd refuses). Training alternates with eval.
            module.support_avx512bf16_for_cpu = False


def release_checkpoint_pages(model: Any) -> None:
    """Copies the CPU weights bitsandbytes left unquantized (embeddings, norms, head) into memory of
    their own.

    transformers reads a checkpoint through a memory map and leaves the weights it does not convert
    as views of that map, so the map outlives loading, and with it every page of the file the
    quantizer read: the whole full-precision checkpoint stays resident beside its 4-bit copy. For a
    GPT-2 large shaped base that was 1.5 GB of file pages held for 0.5 GB of 4-bit weights, which made
    a QLoRA run's peak RSS on CPU no lower than a bfloat16 run's (docs/performance.md). Copying the
    few unquantized weights (about a fifth of the bytes) drops the last views, and the map with them.
    Weights already on a GPU are not views of the file and are left alone."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:  # each shared (tied) weight once
            if t.device.type == "cpu" and not is_quantized_weight(t):
                t.data = t.data.clone()


def quantized_summary(model: Any) -> tuple[int, int]:
    """(quantized layers, their weight bytes: the packed weights and their quantization scales)."""
    weights = {id(p): p for p in model.parameters() if is_quantized_weight(p)}
    return len(weights), sum(param_bytes(w) for w in weights.values())


def weight_bytes(model: Any) -> int:
    """Bytes of every base weight (parameters and buffers, quantization scales included)."""
    return sum(param_bytes(p) for p in model.parameters()) + sum(tensor_bytes(b) for b in model.buffers())


def param_bytes(p: torch.Tensor) -> int:
    """A weight's bytes; a quantized one's with its scales: a 4-bit weight's ``QuantState`` (absmax,
    and with double quantization the quantized absmax's own scales and code), an 8-bit weight's
    per-row scales (``SCB``)."""
    size = tensor_bytes(p)
    state = getattr(p, "quant_state", None)
    if state is not None:
        size += sum(tensor_bytes(t) for t in (state.absmax, state.code) if isinstance(t, torch.Tensor))
        nested = getattr(state, "state2", None)
        if nested is not None:
            size += sum(tensor_bytes(t) for t in (nested.absmax, nested.code) if isinstance(t, torch.Tensor))
    scales = getattr(p, "SCB", None)
    return size + (tensor_bytes(scales) if isinstance(scales, torch.Tensor) else 0)


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
