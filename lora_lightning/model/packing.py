"""Whether a model keeps the examples of a packed row apart: checked on the model, not assumed.

A packed row (:class:`~lora_lightning.data.tokenization.PackingCollator`) holds several examples
one after another, with ``position_ids`` restarting at 0 for each and no 2D attention mask.
transformers' ``create_causal_mask`` reads those positions as packed sequences and builds a
block-diagonal causal mask (GPT-2, GPT-NeoX, Llama and the other models built on it, sdpa and
eager attention alike), so each example sees only itself, at its own positions. A model whose code
does not (remote code, an older mask path, positions taken from the attention mask) would let
examples see each other or shift their positions; :func:`check_packing` probes the model once, in
the precision it trains in, and refuses packing for it.
"""

from __future__ import annotations

from typing import Any

import torch

from lora_lightning.errors import UserInputError
from lora_lightning.model.loss import unwrap_causal_lm

# Each shown as a share of what the same probe measures when the boundary is ignored (one causal
# sequence over the row): attention crossing examples (exactly 0 when kept apart, any precision) ...
LEAK_TOLERANCE = 0.01
# ... and an example's logits packed vs alone (rounding differences only, in half precision too).
POSITION_TOLERANCE = 0.25


def probe_packing(model: Any) -> dict[str, float]:
    """One short example (``second``) after another (``first`` or a same-length ``other``) in one
    packed row, against ``second`` alone and against the row as one plain causal sequence:

    - ``leak``: largest change of ``second``'s logits when ``first`` is replaced by ``other``, packed;
      ``leak_ignored``: the same without packing (plain causal attention over the row);
    - ``shift``: mean difference of ``second``'s logits packed vs alone; ``shift_ignored``: the same
      without packing.
    """
    hf = unwrap_causal_lm(model)
    device = next(hf.parameters()).device
    vocab = int(hf.config.vocab_size)
    first, other = (torch.arange(7, device=device) * 37 + 11) % vocab, (torch.arange(7, device=device) * 41 + 5) % vocab
    second = (torch.arange(5, device=device) * 53 + 101) % vocab
    positions = torch.cat([torch.arange(7, device=device), torch.arange(5, device=device)])[None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():

            def tail(head: torch.Tensor, packed: bool) -> torch.Tensor:
                row = torch.cat([head, second])[None]
                kwargs = {"attention_mask": None, "position_ids": positions} if packed else {}
                return model(input_ids=row, use_cache=False, **kwargs).logits[0, head.numel() :].float()

            alone = model(input_ids=second[None], use_cache=False).logits[0].float()
            packed, ignored = tail(first, True), tail(first, False)
            packed_other, ignored_other = tail(other, True), tail(other, False)
    finally:
        model.train(was_training)
    return {
        "leak": float((packed - packed_other).abs().max()),
        "leak_ignored": float((ignored - ignored_other).abs().max()),
        "shift": float((packed - alone).abs().mean()),
        "shift_ignored": float((ignored - alone).abs().mean()),
    }


def check_packing(model: Any) -> None:
    """Raises :class:`UserInputError` unless the model confines each packed example to itself."""
    p = probe_packing(model)
    if p["leak"] <= LEAK_TOLERANCE * p["leak_ignored"] and p["shift"] <= POSITION_TOLERANCE * p["shift_ignored"]:
        return
    config = unwrap_causal_lm(model).config
    raise UserInputError(
        f"data.packing: this model ({config.model_type}, {config._attn_implementation} attention) does not keep "
        f"packed examples apart (an example's logits change by up to {p['leak']:.3g} with the example before it "
        f"in its row, and differ from its own by {p['shift']:.3g} on average); set data.packing=false"
    )
