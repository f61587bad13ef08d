"""Loading trained adapters onto their base: one, or several under their own names.

An adapter folder is peft's format; its ``adapter_config.json`` names the base it was trained on.
Anything that keeps an adapter from fitting its base (another architecture, another rank, corrupt
weights) is one :class:`ModelLoadError` naming both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lora_lightning.errors import first_line
from lora_lightning.loading import DEFAULT_BASE_CACHE, ModelLoadError, load_causal_lm, resolve_model_path


def adapter_base(lora_adapter_path: str | Path) -> str:
    """The base model an adapter folder names (``base_model_name_or_path`` of its config)."""
    config = Path(lora_adapter_path) / "adapter_config.json"
    if not config.is_file():
        raise ModelLoadError(f"{str(lora_adapter_path)!r} is not an adapter folder (no adapter_config.json)")
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{config} does not name its base model; pass the base explicitly")
    return base


def trained_quantization(adapter: str | Path) -> str | None:
    """The quantization of the base the adapter was trained on (``nf4``, ``fp4``, ``int8``; its
    ``training_history.json``), or None: trained on a full- or half-precision base."""
    history = Path(adapter, "training_history.json")
    try:
        return json.loads(history.read_text()).get("base_quantization")
    except (OSError, ValueError):
        return None


def load_lora_model(
    base_model_path: str | None,
    lora_adapter_path: str | Path,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    base_cache_dir: str = DEFAULT_BASE_CACHE,
) -> Any:
    """Base model plus adapter, ready for inference (the guide's ``load_lora_model``).

    ``base_model_path`` may be None to use the base the adapter names.
    """
    base = resolve_model_path(base_model_path or adapter_base(lora_adapter_path), base_cache_dir)
    model = attach_adapter(load_causal_lm(base, trust_remote_code), lora_adapter_path)
    return model.to(device).eval()


def attach_adapter(model: Any, adapter: str | Path, trainable: bool = False, name: str = "default") -> Any:
    """``model`` with the adapter in folder ``adapter`` loaded by peft (a clear error when it does not fit)."""
    from peft import PeftModel

    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(adapter), adapter_name=name, is_trainable=trainable)
            return model
        return PeftModel.from_pretrained(model, str(adapter), adapter_name=name, is_trainable=trainable)
    except Exception as err:  # size mismatches, missing modules, corrupt safetensors: all "cannot use this"
        raise ModelLoadError(
            f"adapter {str(adapter)!r} cannot be loaded onto base {model.name_or_path!r}: {first_line(err)}"
        ) from None


def load_adapters(
    base_model_path: str | None,
    adapters: dict[str, str | Path],
    device: str = "cpu",
    base_cache_dir: str = DEFAULT_BASE_CACHE,
) -> Any:
    """One base with several adapters, each under its own name; switch with ``model.set_adapter(name)``.

    The base is the one the first adapter names unless given. Adapters trained on different task
    sets share the frozen base in memory: the guide's "modular" use.
    """
    if not adapters:
        raise ModelLoadError("give at least one adapter")
    names = list(adapters)
    base = resolve_model_path(base_model_path or adapter_base(adapters[names[0]]), base_cache_dir)
    model = load_causal_lm(base)
    for name in names:
        model = attach_adapter(model, adapters[name], name=name)
    model.set_adapter(names[0])
    return model.to(device).eval()
