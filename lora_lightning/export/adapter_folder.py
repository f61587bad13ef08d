"""Writes an adapter folder (or, fully fine-tuned, a model folder) whole, atomically.

``adapter_config.json`` and ``adapter_model.safetensors`` (peft's ``save_pretrained``), the tokenizer
files, ``prompt_format.json``, ``training_history.json``, ``loss_curves.png`` and the model card
``README.md``: a folder that plain ``PeftModel.from_pretrained(base, folder)`` and
``AutoPeftModelForCausalLM.from_pretrained(folder)`` load. It is written to a temporary folder,
fsynced and swapped into place, so a crash mid-write never leaves a half-written adapter where a
good one was; a folder there that this project did not write is refused
(:func:`~lora_lightning.atomic_write.atomic_folder`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lora_lightning.atomic_write import atomic_folder
from lora_lightning.export.loss_plot import LOSS_PLOT, plot_loss_curves
from lora_lightning.export.model_card import model_card
from lora_lightning.prompts import write_prompt_format


def write_adapter_folder(
    target: Path,
    model: Any,
    tokenizer: Any,
    prompt_format: str,
    history: Mapping[str, Any],
    settings: Mapping[str, str],
    overwrite: bool = False,
    overwrite_flag: str = "",
    weights: dict | None = None,
) -> Path:
    """``target`` holding ``model``'s adapter (``weights``: a sharded model's, gathered), the
    ``tokenizer`` the data was tokenized with and its ``prompt_format``, the run's ``history``
    (``training_history.json``) and a card with the training ``settings``
    (:func:`~lora_lightning.export.model_card.training_settings`)."""
    with atomic_folder(target, overwrite, overwrite_flag) as tmp:
        gathered = {"state_dict": weights} if weights is not None else {}
        model.save_pretrained(tmp, safe_serialization=True, **gathered)
        tokenizer.save_pretrained(tmp)
        (tmp / "training_history.json").write_text(json.dumps(dict(history), indent=1))
        write_prompt_format(tmp, prompt_format)
        config_file = tmp / "adapter_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else None
        plot = LOSS_PLOT if plot_loss_curves(history, tmp / LOSS_PLOT) else None
        (tmp / "README.md").write_text(model_card(history, config, settings=settings, plot=plot))
    return target
