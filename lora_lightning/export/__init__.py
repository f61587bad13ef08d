"""The adapter folder and everything in it, written in one place: peft's files, the tokenizer, the
prompt format, the training history, the loss plot and the model card (with its evaluation, filled
in by ``test``). ``lora_lightning.hub`` only checks access and uploads the folder."""

from lora_lightning.export.adapter_folder import write_adapter_folder
from lora_lightning.export.model_card import training_settings, write_card_evaluation

__all__ = ["training_settings", "write_adapter_folder", "write_card_evaluation"]
