"""lora_lightning: LoRA instruction tuning of causal language models on PyTorch Lightning."""

from lora_lightning.offline_imports import import_bitsandbytes_if_installed

import_bitsandbytes_if_installed()  # before peft and transformers do: it cannot fetch Hub kernels then


from lora_lightning.callbacks import AdapterCheckpoint  # noqa: E402
from lora_lightning.data import FlanDataModule  # noqa: E402
from lora_lightning.model import LoRAModule, generate, load_lora_model  # noqa: E402

__all__ = ["AdapterCheckpoint", "FlanDataModule", "LoRAModule", "generate", "load_lora_model"]
__version__ = "0.1.0"
