"""lora_lightning: LoRA instruction tuning of causal language models on PyTorch Lightning."""

from lora_lightning.callbacks import AdapterCheckpoint
from lora_lightning.data import FlanDataModule
from lora_lightning.model import LoRAModule, generate, load_lora_model

__all__ = ["AdapterCheckpoint", "FlanDataModule", "LoRAModule", "generate", "load_lora_model"]
__version__ = "0.1.0"
