"""Trainer callbacks: adapter-only export, the results table, per-task curves, run summaries, early stopping,
generation samples in TensorBoard, prediction output, last.ckpt, sample audit, throughput, tracker artifacts."""

from lora_lightning.callbacks.adapter_checkpoint import AdapterCheckpoint
from lora_lightning.callbacks.early_stop import EarlyStop
from lora_lightning.callbacks.evaluation_report import EvaluationReport
from lora_lightning.callbacks.generation_samples import GenerationSamples
from lora_lightning.callbacks.last_checkpoint import LastCheckpoint
from lora_lightning.callbacks.prediction_writer import JsonlPredictionWriter
from lora_lightning.callbacks.run_summary import RunSummary
from lora_lightning.callbacks.sample_audit import SampleAudit
from lora_lightning.callbacks.task_curves import TaskCurves
from lora_lightning.callbacks.throughput import ThroughputLogger
from lora_lightning.callbacks.tracker_artifacts import TrackerArtifacts

__all__ = [
    "AdapterCheckpoint",
    "EarlyStop",
    "EvaluationReport",
    "GenerationSamples",
    "JsonlPredictionWriter",
    "LastCheckpoint",
    "RunSummary",
    "SampleAudit",
    "TaskCurves",
    "ThroughputLogger",
    "TrackerArtifacts",
]
