"""Merging an adapter into its base: a standard Transformers folder that needs no peft to load.

Before writing, the merged model's logits are compared with base + adapter on probe prompts; a
merge that changes them by more than ``atol`` is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lora_lightning.atomic_write import atomic_folder, check_writable_folder
from lora_lightning.errors import UserInputError
from lora_lightning.loading import DEFAULT_BASE_CACHE, load_tokenizer
from lora_lightning.model.adapters import load_lora_model

PROBES = [
    "Concepts: dog, ball, park\n\nWrite a sentence that includes all these words.",
    "The river is long.\n\nCan we conclude that the river is short?\n\nOPTIONS:\n- False\n- True",
]


class MergeError(UserInputError):
    """A merge that would not reproduce base + adapter, or an output that would be overwritten."""


def merge_adapter(
    adapter: str | Path,
    output: str | Path,
    base: str | None = None,
    atol: float = 1e-4,
    overwrite: bool = False,
    base_cache_dir: str = DEFAULT_BASE_CACHE,
) -> float:
    """Merges, checks and saves; returns the largest logit difference found by the check.

    A non-empty ``output`` that this project did not write is refused unless ``overwrite``;
    the current directory, its ancestors and a checkout are refused always
    (:func:`~lora_lightning.atomic_write.check_writable_folder`)."""
    output = Path(output)
    try:  # before any model is loaded: a refused output costs nothing
        check_writable_folder(output, overwrite, "--overwrite true")
    except UserInputError as err:
        raise MergeError(str(err)) from None
    model = load_lora_model(base, adapter, base_cache_dir=base_cache_dir)
    tokenizer = load_tokenizer(str(adapter))
    tokenizer.padding_side = "right"
    probe = tokenizer(PROBES, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**probe).logits
        merged = model.merge_and_unload()
        got = merged(**probe).logits
    mask = probe["attention_mask"].bool()
    diff = float((expected - got).abs()[mask].max())
    if diff > atol:
        raise MergeError(f"merged logits differ from base + adapter by {diff:.2e} > atol {atol:g}; nothing written")
    with atomic_folder(output, overwrite, "--overwrite true") as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return diff
