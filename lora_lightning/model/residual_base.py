"""The real base model under an adapter whose initialisation rewrote it, for the "base" column.

An adapter trained with ``init_lora_weights`` pissa or olora fits a residual: peft, when it loads
the adapter, reruns the initialisation and rewrites each adapted base weight ``W`` to
``W - scale * B0 A0`` (the initial adapter, from the SVD or QR of ``W``). ``disable_adapter()`` then
leaves that residual, a model nobody trained or published, so a "base" column computed with it
would not be the base model's scores.

So, before such an adapter is attached, the weights of the modules it adapts are copied (a share of
the model: the attention projections by default, not a second model), and after it is attached the
copies of the weights peft rewrote are handed back with the model (:class:`RewrittenWeights`, which the
module keeps). :func:`scoring_base` disables the adapter and swaps those copies in: bit for bit the
weights a fresh load of the base gives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lora_lightning.loading import ModelLoadError
from lora_lightning.model.adapters import attach_adapter

INITS_KEEPING_BASE = (True, False, "gaussian")  # peft initialisations that leave the base weights alone


class RewrittenWeights:
    """The base weights an adapter's initialisation rewrote: ``(layer, original weight)`` pairs."""

    def __init__(self, pairs: list[tuple[torch.nn.Module, torch.Tensor]]):
        self.pairs = pairs

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """The original weights in place for the duration (each moved once to its layer's device and dtype)."""
        current = [layer.weight.data for layer, _ in self.pairs]
        try:
            for k, (layer, original) in enumerate(self.pairs):
                if (original.device, original.dtype) != (current[k].device, current[k].dtype):
                    original = original.to(current[k].device, current[k].dtype)  # as a fresh base would be
                    self.pairs[k] = (layer, original)
                layer.weight.data = original
            yield
        finally:
            for (layer, _), weight in zip(self.pairs, current):
                layer.weight.data = weight


def attach_keeping_base(
    model: Any, adapter: str | Path, trainable: bool = False
) -> tuple[Any, RewrittenWeights | None]:
    """:func:`~lora_lightning.model.adapters.attach_adapter`, and the original of every base weight
    the adapter's initialisation rewrites (PiSSA, OLoRA) for :func:`scoring_base` (None: none rewritten)."""
    from peft import PeftConfig
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import check_target_module_exists

    config = PeftConfig.from_pretrained(str(adapter))
    if getattr(config, "init_lora_weights", True) in INITS_KEEPING_BASE:  # not LoRA: no such initialisation
        return attach_adapter(model, adapter, trainable), None
    copies = {
        name: module.weight.detach().clone()
        for name, module in model.named_modules()
        if check_target_module_exists(config, name) and isinstance(getattr(module, "weight", None), torch.Tensor)
    }
    model = attach_adapter(model, adapter, trainable)
    pairs = []
    for name, layer in model.get_base_model().named_modules():
        if isinstance(layer, LoraLayer):
            base = layer.get_base_layer()
            if name not in copies:
                raise ModelLoadError(f"adapter {str(adapter)!r}: no copy of the base weight of {name} was kept")
            if not torch.equal(base.weight, copies[name]):
                pairs.append((base, copies[name]))
    return model, RewrittenWeights(pairs)


@contextlib.contextmanager
def scoring_base(model: Any, kept: RewrittenWeights | None) -> Iterator[None]:
    """The base model, for the "base" column: the adapter disabled and any base weight its
    initialisation rewrote (``kept``, from :func:`attach_keeping_base`) put back."""
    with model.disable_adapter(), kept.restored() if kept is not None else contextlib.nullcontext():
        yield
