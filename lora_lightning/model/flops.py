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

The peak is the GPU's datasheet figure (Lightning's table) or, on a CPU, a dense GEMM in the training
dtype: a measured, not a nominal, ceiling. A CPU's is measured once per machine (CPU model and matmul
instruction sets, torch threads, torch version, dtype), as the best of several trials so that a busy
moment does not lower it, and cached with its date (:func:`cpu_peak_flops`): every later run divides
by the same figure, so MFU is comparable from run to run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from lora_lightning.atomic_write import atomic_file
from lora_lightning.model.loss import unwrap_causal_lm

PEAK_TRIALS = 3  # measurements of PEAK_SIZE x PEAK_SIZE matmuls, PEAK_SECONDS each; the best is kept
PEAK_SIZE, PEAK_SECONDS = 2048, 1.0


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


def peak_cache_file() -> Path:
    """Where measured CPU peaks are kept: ``$LORA_LIGHTNING_CACHE``, else ``~/.cache/lora_lightning``."""
    home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("LORA_LIGHTNING_CACHE") or home_cache / "lora_lightning") / "peak_flops.json"


MATMUL_FEATURES = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512f", "avx2", "fma", "asimd", "sve")
"""CPU flags that change a dense GEMM's speed: a cloud "Intel(R) Xeon(R) Processor" comes with and
without AMX under one model name (2.2 against 0.4 TFLOP/s in bfloat16 here), so a peak is kept per set."""


def machine_key(dtype: torch.dtype, cpuinfo: str | None = None) -> str:
    """What a measured peak belongs to: the CPU model and its matmul instruction sets
    (:data:`MATMUL_FEATURES`), the threads torch uses, torch's version, the dtype."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    lines = cpuinfo.splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name") and ":" in line]
    cpu = names[0] if names else platform.processor() or platform.machine()
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith(("flags", "Features"))), [])
    features = "+".join(f for f in MATMUL_FEATURES if f in flags) or "no known matmul flags"
    dtype_name = str(dtype).split(".")[-1]
    return f"{cpu} ({features}) | {torch.get_num_threads()} threads | torch {torch.__version__} | {dtype_name}"


def cpu_peak_flops(dtype: torch.dtype, cache: Path | None = None, trials: int = PEAK_TRIALS) -> tuple[float, str]:
    """This CPU's dense-GEMM FLOP/s in ``dtype``: read from ``cache`` (:func:`peak_cache_file`) when this
    machine's was measured before, else measured now (the best of ``trials``) and cached with its date.
    Returns the figure and where it came from, for the log."""
    cache = cache or peak_cache_file()
    key = machine_key(dtype)
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    entry = known.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("flops"), (int, float)) and entry["flops"] > 0:
        return float(entry["flops"]), f"measured {entry.get('date')}, best of {entry.get('trials')}; cached in {cache}"
    best = max(measured_peak_flops(dtype, PEAK_SIZE, PEAK_SECONDS) for _ in range(trials))
    known[key] = {"flops": best, "date": datetime.date.today().isoformat(), "trials": trials}
    try:
        with atomic_file(cache) as f:
            f.write(json.dumps(known, indent=1))
    except OSError:
        return best, f"measured now, best of {trials} (not cached: {cache} is not writable)"
    return best, f"measured now, best of {trials}; cached in {cache}"


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    if device.type == "cpu":
        return cpu_peak_flops(dtype)[0]
    from lightning.fabric.utilities.throughput import get_available_flops

    return get_available_flops(device, dtype)
