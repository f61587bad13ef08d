"""What a model takes from the data it trains on: one tokenizer, one prompt format, one length.

The datamodule loads the tokenizer and resolves the prompt format once; the module receives them in
:meth:`~lora_lightning.model.module.LoRAModule.connect` (LitGPT's ``connect``), so what it scores,
generates and writes beside the adapter (``prompt_format.json``, the tokenizer files) is what the
data was tokenized with, in the Python API as through the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DataHandoff:
    """The data's tokenizer (and where it came from), its resolved prompt format (``plain`` or
    ``chat``) and the longest prompt + completion it lays out (``max_length``)."""

    tokenizer: Any
    tokenizer_source: str
    prompt_format: str
    max_length: int
