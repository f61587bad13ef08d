"""Training throughput in TensorBoard: Lightning's ``ThroughputMonitor``, fed this project's counts.

Lightning's :class:`~lightning.pytorch.callbacks.ThroughputMonitor` times the steps (wall clock
from one batch end to the next, validation left out), keeps the rolling window and logs, on rank 0
every ``trainer.log_every_n_steps`` steps, ``train/device/samples_per_sec`` (examples),
``train/device/items_per_sec`` (real tokens), ``train/device/flops_per_sec`` and ``train/device/mfu``
(with several ranks also ``train/samples_per_sec``, ``train/items_per_sec``, ``train/flops_per_sec``
over all of them; the same under ``validate/`` for the validation batches of ``fit``).
"""

from __future__ import annotations

import resource
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from lora_lightning.distributed import gather_objects
from lora_lightning.model.flops import cpu_peak_flops
from lora_lightning.model.sharding import parameter_bytes


def examples_in(batch: dict[str, Any]) -> int:
    """Examples, not rows: a packed batch holds several examples per row."""
    examples = batch.get("example_id")
    return len(examples) if examples is not None else int(batch["input_ids"].shape[0])


def real_tokens(batch: dict[str, Any]) -> int:
    """Non-padding tokens."""
    return int(batch["attention_mask"].sum())


class ThroughputLogger(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` during ``fit``, plus what it cannot know by itself:

    - the FLOPs of each batch, from the batch (:func:`~lora_lightning.model.flops.batch_flops`:
      real tokens, attention per packed example, the completion-only head, no weight gradients
      for frozen weights), which the module computes for each batch it runs (its ``flops_per_batch``,
      where the monitor reads it); validation batches count the forward only;
    - a peak for MFU on CPU: Lightning's table has GPU datasheet figures only (no MFU on CPU), so
      there a dense GEMM in the training dtype is measured once per machine and cached
      (:func:`~lora_lightning.model.flops.cpu_peak_flops`), so MFU compares across runs;
    - samples are examples and items are real tokens (not rows and padded positions);
    - ``fit`` only: ``test`` and ``predict`` batches are evaluation examples of another shape;
    - the parameter bytes each rank holds (about 1/world of the model under FSDP2) at the start,
      each rank's peak resident memory at the end.

    Args:
        window: Steps in the rolling window (at least 2).
    """

    def __init__(self, window: int = 5):
        super().__init__(batch_size_fn=examples_in, length_fn=real_tokens, window_size=window)
        self.window = window

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        super().setup(trainer, pl_module, stage)
        device = trainer.strategy.root_device
        if self.available_flops is None and device.type == "cpu":
            dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
            self.available_flops, where = cpu_peak_flops(dtype)
            for throughput in self._throughputs.values():
                throughput.available_flops = self.available_flops
            rank_zero_info(f"Peak for MFU: {self.available_flops / 1e12:.2f} TFLOP/s ({dtype} on this CPU, {where})")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        held = gather_objects([parameter_bytes(pl_module.model)])  # every rank: a collective under DDP/FSDP
        rank_zero_info(
            f"Parameters held per rank: {' / '.join(f'{h / 2**20:.1f}' for h, _ in held)} MB "
            f"of {held[0][1] / 2**20:.1f} MB"
        )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        peaks = gather_objects([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024])  # KiB on Linux
        rank_zero_info(f"Peak RSS per rank: {' / '.join(f'{mb:,.0f}' for mb in peaks)} MB")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_start(trainer, pl_module)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_end(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Not measured: evaluation batches (see the class docstring)."""

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Not measured."""

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Not measured."""

    def on_predict_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """Not measured."""
