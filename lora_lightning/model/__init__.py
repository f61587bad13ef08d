"""The model side: adding LoRA to a base, the loss, the LightningModule, adapters, generation, merging."""

from lora_lightning.model.adapters import load_adapters, load_lora_model
from lora_lightning.model.generation import generate
from lora_lightning.model.module import LoRAModule

__all__ = ["LoRAModule", "generate", "load_adapters", "load_lora_model"]
