"""Any peft method, not only LoRA: ``model.peft_config`` names a peft config class and its arguments.

TRL's ``peft_config`` slot, as a config mapping (plain data, so it is saved with the run's
hyperparameters and read back from a checkpoint without unpickling anything)::

    model:
      peft_config:
        class_path: peft.IA3Config          # or peft.LoHaConfig, peft.LoKrConfig, a class of your own
        init_args: {target_modules: [c_attn, mlp.c_proj], feedforward_modules: [mlp.c_proj]}

The class must subclass ``peft.PeftConfig``; the task type is ``CAUSAL_LM`` unless given. The adapter
trains, checkpoints and exports as a LoRA adapter does (peft's ``save_pretrained`` format), and loads
with plain ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from lora_lightning.errors import UserInputError, first_line


def peft_config_class(class_path: Any) -> type:
    """The ``PeftConfig`` subclass ``class_path`` names (``peft.IA3Config``, ``my_pkg.MyConfig``)."""
    from peft import PeftConfig

    module, _, name = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module or "peft"), name)
    except (ImportError, AttributeError, ValueError):
        raise UserInputError(
            f"model.peft_config.class_path {class_path!r} names no importable class (e.g. peft.IA3Config)"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, PeftConfig)):
        raise UserInputError(f"model.peft_config.class_path {class_path!r} is not a peft.PeftConfig subclass")
    return cls


def check_peft_config(spec: Any) -> None:
    """One line for a ``peft_config`` that is not ``{class_path: ..., init_args: {...}}`` of a peft config."""
    if not isinstance(spec, Mapping) or "class_path" not in spec or set(spec) - {"class_path", "init_args"}:
        raise UserInputError("model.peft_config must be {class_path: peft.<Method>Config, init_args: {...}}")
    if not isinstance(spec.get("init_args") or {}, Mapping):
        raise UserInputError("model.peft_config.init_args must be a mapping of the config class's arguments")
    peft_config_class(spec["class_path"])


def build_peft_config(spec: Mapping[str, Any]) -> Any:
    """The peft config object for ``spec``, task type ``CAUSAL_LM`` unless it names one."""
    cls = peft_config_class(spec["class_path"])
    args = dict(spec.get("init_args") or {})
    args.setdefault("task_type", "CAUSAL_LM")
    try:
        return cls(**args)
    except (TypeError, ValueError) as err:
        raise UserInputError(f"model.peft_config {spec['class_path']}: {first_line(err)}") from None


def apply_peft_method(model: Any, spec: Mapping[str, Any]) -> Any:
    """``model`` wrapped by peft with one trainable adapter of the method ``spec`` configures."""
    from peft import get_peft_model

    config = build_peft_config(spec)
    try:
        return get_peft_model(model, config)
    except (ValueError, TypeError, KeyError) as err:
        raise UserInputError(
            f"cannot apply {spec['class_path']} to {model.config.model_type!r}: {first_line(err)}"
        ) from None
