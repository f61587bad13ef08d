"""The data side: the task registry, templates, tokenization and the LightningDataModule."""

from lora_lightning.data.datamodule import FlanDataModule
from lora_lightning.data.tasks import TaskSpec, load_task

__all__ = ["FlanDataModule", "TaskSpec", "load_task"]
