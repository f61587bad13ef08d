"""The model side: loading a base, adding LoRA, the loss, the LightningModule, inference."""

from lora_lightning.model.inference import generate, load_lora_model
from lora_lightning.model.module import LoRAModule

__all__ = ["LoRAModule", "generate", "load_lora_model"]
