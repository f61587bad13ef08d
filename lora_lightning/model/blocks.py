"""The repeated decoder blocks of a causal LM: the unit FSDP2 shards and ``torch.compile`` compiles.

Found from the model's own ``_no_split_modules`` (``GPT2Block``, ``GPTNeoXLayer``,
``LlamaDecoderLayer``, ...): the class names transformers marks as never split, which are the blocks.
"""

from __future__ import annotations

from typing import Any

import torch

from lora_lightning.errors import UserInputError
from lora_lightning.model.loss import unwrap_causal_lm


def decoder_blocks(model: Any, instead: str) -> list[torch.nn.Module]:
    """The model's decoder blocks; ``instead`` (what to do when it has none) ends the error."""
    hf = unwrap_causal_lm(model)
    names = set(getattr(hf, "_no_split_modules", None) or ())
    # by any class in the MRO: FSDP2 turns a sharded LlamaDecoderLayer into an FSDPLlamaDecoderLayer subclass
    blocks = [m for m in hf.modules() if any(c.__name__ in names for c in type(m).__mro__)]
    if not blocks:
        raise UserInputError(
            f"cannot find the decoder blocks of {type(hf).__name__} (its _no_split_modules is "
            f"{sorted(names) or 'empty'}); {instead}"
        )
    return blocks
