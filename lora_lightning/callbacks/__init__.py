"""Trainer callbacks: adapter-only export, generation samples in TensorBoard, prediction output."""

from lora_lightning.callbacks.adapter_checkpoint import AdapterCheckpoint
from lora_lightning.callbacks.generation_samples import GenerationSamples
from lora_lightning.callbacks.prediction_writer import JsonlPredictionWriter

__all__ = ["AdapterCheckpoint", "GenerationSamples", "JsonlPredictionWriter"]
