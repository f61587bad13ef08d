"""Trainer callbacks: adapter-only export, generation samples in TensorBoard, prediction output, last.ckpt, sample audit,
throughput."""

from lora_lightning.callbacks.adapter_checkpoint import AdapterCheckpoint
from lora_lightning.callbacks.generation_samples import GenerationSamples
from lora_lightning.callbacks.last_checkpoint import LastCheckpoint
from lora_lightning.callbacks.prediction_writer import JsonlPredictionWriter
from lora_lightning.callbacks.sample_audit import SampleAudit
from lora_lightning.callbacks.throughput import ThroughputLogger

__all__ = ["AdapterCheckpoint", "GenerationSamples", "JsonlPredictionWriter", "LastCheckpoint", "SampleAudit",
           "ThroughputLogger"]
