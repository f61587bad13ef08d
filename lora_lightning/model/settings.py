"""The model's settings, typed and checked once, before anything loads.

``LoRAModule`` takes its keys flat (``--model.lora_r 8``: what users type and configs hold);
:meth:`ModelSettings.from_hparams` groups them (the LoRA keys into :class:`LoraSettings`) and checks
every one, as :class:`~lora_lightning.data.pipeline.DataSettings` does for the data. What builds the
model (:func:`~lora_lightning.model.building.build_model`) reads these, never the raw mapping.

The adapter method is one of: a fresh LoRA adapter (``lora`` true: the ``lora_*`` keys), a trained
adapter to start from (``adapter``), any other peft method (``peft_config``), or none (``lora``
false: every weight trains).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_lightning.errors import UserInputError
from lora_lightning.model.compiling import check_memory_budget
from lora_lightning.model.lora import check_lora_settings
from lora_lightning.model.neftune import check_neftune_alpha
from lora_lightning.model.optim import check_loraplus_ratio
from lora_lightning.model.peft_method import check_peft_config
from lora_lightning.model.quantization import check_quantization


@dataclass(frozen=True)
class LoraSettings:
    """A fresh LoRA adapter: rank, scale, dropout, which biases train, where it goes, its variant and init."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.1
    bias: str = "none"
    target_modules: str | list[str] = "auto"
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: str = "default"

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> LoraSettings:
        settings = cls(
            **{name: hp[f"lora_{name}"] for name in ("r", "alpha", "dropout", "bias")},
            **{name: hp[name] for name in ("target_modules", "use_rslora", "use_dora", "init_lora_weights")},
        )
        check_lora_settings(settings.r, settings.alpha, settings.dropout, settings.bias, settings.init_lora_weights)
        return settings


@dataclass(frozen=True)
class ModelSettings:
    """What base, which adapter method, and how the base is held (dtype, quantization, memory savers)."""

    model_name: str | None
    adapter: str | None = None
    lora: LoraSettings | None = None
    peft_config: Mapping[str, Any] | None = None
    quantization: str | None = None
    base_dtype: str = "auto"
    gradient_checkpointing: bool = False
    neftune_noise_alpha: float | None = None
    trust_remote_code: bool = False
    base_cache_dir: str = ".cache"
    attn_implementation: str | None = None

    @property
    def trains_adapter(self) -> bool:
        """An adapter trains on a frozen base (False: full fine-tuning)."""
        return self.lora is not None or self.adapter is not None or self.peft_config is not None

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> ModelSettings:
        """The settings of a LoRAModule's hyperparameters, each checked (one line for the first bad one)."""
        adapter, peft_config = hp.get("adapter"), hp.get("peft_config")
        if adapter is not None and not Path(adapter, "adapter_config.json").is_file():
            raise UserInputError(f"model.adapter {adapter!r} is not an adapter folder (no adapter_config.json)")
        if peft_config is not None:
            if not hp.get("lora", True):
                raise UserInputError("model.peft_config trains an adapter, model.lora false every weight: drop one")
            if adapter is not None:
                raise UserInputError("model.adapter already fixes the adapter method: drop model.peft_config")
            check_peft_config(peft_config)
        lora = LoraSettings.from_hparams(hp) if hp.get("lora", True) and adapter is None and not peft_config else None
        settings = cls(
            model_name=hp.get("model_name"),
            adapter=adapter,
            lora=lora,
            peft_config=peft_config,
            **{key: hp[key] for key in ("quantization", "base_dtype", "gradient_checkpointing", "trust_remote_code")},
            neftune_noise_alpha=hp.get("neftune_noise_alpha"),
            base_cache_dir=hp["base_cache_dir"],
            attn_implementation=hp.get("attn_implementation"),
        )
        check_loraplus_ratio(hp.get("loraplus_lr_ratio"), settings.trains_adapter and peft_config is None)
        check_quantization(settings.quantization, settings.trains_adapter)
        check_neftune_alpha(settings.neftune_noise_alpha)
        check_memory_budget(hp.get("compile_memory_budget", 1.0))
        if hp["learning_rate"] <= 0 or not 0.0 <= hp["warmup_ratio"] < 1.0:
            raise UserInputError(
                f"need model.learning_rate > 0, warmup_ratio in [0,1): {hp['learning_rate']}, {hp['warmup_ratio']}"
            )
        return settings
