"""Training throughput in TensorBoard: real tokens/s, samples/s and model FLOPs utilisation (MFU).

Timed from batch start to batch end (data loading excluded, optimizer step included), summed over
``window`` batches, and logged as ``perf/tokens_per_s``, ``perf/samples_per_s``, ``perf/mfu``.
At the start it prints the parameter bytes each rank holds (about 1/world of the model under FSDP2),
at the end each rank's peak resident memory.
Tokens are non-padding tokens; MFU is :func:`~lora_lightning.model.flops.batch_flops` over the
device peak (measured by a GEMM at start-up on CPU).
"""

from __future__ import annotations

import resource
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lora_lightning.distributed import gather_objects
from lora_lightning.model.flops import batch_flops, peak_flops
from lora_lightning.model.sharding import parameter_bytes


class ThroughputLogger(Callback):
    """Logs tokens/s, samples/s and MFU every ``window`` training batches.

    Args:
        window: Batches per measurement.
    """

    def __init__(self, window: int = 5):
        self.window = window
        self.peak: float | None = None
        self._start = 0.0
        self._reset()

    def _reset(self) -> None:
        self.seconds = self.tokens = self.samples = self.flops = 0.0
        self.batches = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
        self.peak = peak_flops(pl_module.device, dtype)
        if self.peak:
            rank_zero_info(f"Peak for MFU: {self.peak / 1e12:.2f} TFLOP/s ({dtype}, {pl_module.device.type})")
        held = gather_objects([parameter_bytes(pl_module.model)])  # every rank: a collective under DDP/FSDP
        rank_zero_info(
            f"Parameters held per rank: {' / '.join(f'{h / 2**20:.1f}' for h, _ in held)} MB "
            f"of {held[0][1] / 2**20:.1f} MB"
        )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        peaks = gather_objects([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024])  # KiB on Linux
        rank_zero_info(f"Peak RSS per rank: {' / '.join(f'{mb:,.0f}' for mb in peaks)} MB")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seconds += time.perf_counter() - self._start
        self.tokens += float(batch["attention_mask"].sum())
        examples = batch.get("example_id")  # one per example: a packed batch has fewer rows than examples
        self.samples += len(examples) if examples is not None else batch["input_ids"].shape[0]
        self.flops += batch_flops(pl_module.model, batch, pl_module.hparams.get("completion_only_head", True))
        self.batches += 1
        if self.batches >= self.window:
            metrics = {
                "perf/tokens_per_s": self.tokens / self.seconds,
                "perf/samples_per_s": self.samples / self.seconds,
            }
            if self.peak:
                metrics["perf/mfu"] = self.flops / self.seconds / self.peak
            pl_module.log_dict(metrics, on_step=True, on_epoch=False)
            self._reset()
