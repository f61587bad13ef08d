"""``model.attn_implementation``: whether the chosen attention kernel can train on this device.

transformers takes the name as it is (``sdpa``, ``eager``, ``flash_attention_2``, ``flex_attention``,
a kernels-hub id) and refuses what it does not know or cannot import when the base loads. What it
cannot see then is a kernel that runs forward but has no backward on the device: torch's
``flex_attention`` on CPU (torch 2.13) fails only at the first training step, deep inside a compiled
graph. :func:`check_attention_trains` asks torch itself, on a tensor of a few bytes, before the base
loads, so a ``fit`` that cannot train stops in one line.
"""

from __future__ import annotations

import torch

from lora_lightning.errors import UserInputError


def check_attention_trains(attn_implementation: str | None, device: torch.device) -> None:
    """Raises :class:`UserInputError` when ``attn_implementation`` has no backward on ``device``."""
    if attn_implementation != "flex_attention":
        return
    from torch.nn.attention.flex_attention import flex_attention

    probe = torch.zeros(1, 1, 16, 16, device=device, requires_grad=True)
    try:
        flex_attention(probe, probe, probe)
    except NotImplementedError as err:
        raise UserInputError(
            f"model.attn_implementation flex_attention cannot train on {device.type} with torch "
            f"{torch.__version__} ({str(err).splitlines()[0]}); use sdpa or eager there"
        ) from None
