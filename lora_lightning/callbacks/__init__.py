"""Trainer callbacks: adapter-only export."""

from lora_lightning.callbacks.adapter_checkpoint import AdapterCheckpoint

__all__ = ["AdapterCheckpoint"]
