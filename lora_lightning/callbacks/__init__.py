"""Trainer callbacks: adapter-only export, prediction output."""

from lora_lightning.callbacks.adapter_checkpoint import AdapterCheckpoint
from lora_lightning.callbacks.prediction_writer import JsonlPredictionWriter

__all__ = ["AdapterCheckpoint", "JsonlPredictionWriter"]
