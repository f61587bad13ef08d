"""Model FLOPs of the work a training step actually does, and the device's peak, for MFU.

Counted per batch, from the batch itself (real tokens, not padding):

- forward: 2 x (weights of every linear layer in the transformer body) per token, plus causal
  attention (2 x layers x width x length^2 per sequence, per example of a packed row, for QK^T
  and AV), plus the LM head
  (2 x width x vocabulary) at the positions where it runs: completion positions with the
  completion-only head, every position otherwise;
- backward: activation gradients cost the forward again (frozen weights get no weight
  gradients), plus 2 x trainable weights per token for the weight gradients of what trains
  (LoRA matrices; every weight in full fine-tuning).

The peak is the GPU's datasheet figure (Lightning's table) or, on a CPU, a dense GEMM measured
at start-up in the training dtype: a measured, not a nominal, ceiling.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from lora_lightning.model.loss import unwrap_causal_lm


def linear_weight_count(model: Any) -> tuple[int, int]:
    """(weights of the body's linear layers, of which trainable), excluding embeddings and LM head."""
    from transformers.pytorch_utils import Conv1D

    hf = unwrap_causal_lm(model)
    body = hf.base_model
    total = trainable = 0
    for module in body.modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            n = module.weight.numel()
            total += n
            trainable += n if module.weight.requires_grad else 0
    return total, trainable


def batch_flops(
    model: Any, batch: dict[str, torch.Tensor], completion_only_head: bool = True, backward: bool = True
) -> float:
    """Model FLOPs of one batch: forward and backward (a training step), or the forward alone."""
    hf = unwrap_causal_lm(model)
    config = hf.config
    width = hf.get_input_embeddings().weight.shape[1]
    vocab = hf.get_output_embeddings().weight.shape[0]
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    segments = batch.get("segments")  # a packed batch: attention stays within each example
    if segments is not None:
        lengths = torch.bincount(segments[segments >= 0]).double()
    else:
        lengths = batch["attention_mask"].sum(dim=1).double()
    tokens = float(lengths.sum())
    head_tokens = float((batch["labels"][:, 1:] != -100).sum()) if completion_only_head else tokens
    linear, trainable_linear = linear_weight_count(model)
    forward = 2 * linear * tokens + 2 * layers * width * float((lengths**2).sum()) + 2 * width * vocab * head_tokens
    if not backward:
        return forward
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 2 * forward + 2 * trainable * tokens


def measured_peak_flops(dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 0.5) -> float:
    """FLOP/s of a dense ``size`` x ``size`` matmul on this CPU, in ``dtype``, over about ``seconds``.

    Its operands come from a generator of its own: measured before the model is configured, a draw
    from the global one would change the seeded initial adapter."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, dtype=dtype, generator=generator)
    b = torch.randn(size, size, dtype=dtype, generator=generator)
    a @ b  # warm-up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - start)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    if device.type == "cpu":
        return measured_peak_flops(dtype)
    from lightning.fabric.utilities.throughput import get_available_flops

    return get_available_flops(device, dtype)
