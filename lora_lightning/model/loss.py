"""Causal-LM loss computed only where it counts.

The LM head (vocabulary-sized) and the cross-entropy are applied only at positions whose label is
not -100, a chunk at a time, so the full ``batch x length x vocab`` logits tensor is never built.
For instruction data, where the completion is a few tokens of a long prompt, that removes most of
the head's FLOPs and memory. Models that transform their logits after the head fall back to the
plain full-logits path, so the loss is always the model's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from lora_lightning.data.tokenization import IGNORE_INDEX
from lora_lightning.model.fused_head import chunked_token_losses

TokenLosses = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""A :func:`compute_token_losses` bound to its model (what :func:`~.sharding.shard_model` returns)."""

# Config attributes of models whose logits are not just ``lm_head(hidden)``.
LOGIT_TRANSFORM_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def unwrap_causal_lm(model: Any) -> Any:
    """The transformers ``*ForCausalLM`` inside a peft wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_completion_only_head(model: Any) -> bool:
    hf = unwrap_causal_lm(model)
    if any(getattr(hf.config, a, None) not in (None, 1, 1.0) for a in LOGIT_TRANSFORM_ATTRS):
        return False
    return hf.get_output_embeddings() is not None and hf.base_model is not hf


def completion_loss(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    chunk_tokens: int = 2048,
    completion_only_head: bool = True,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Sum of token cross-entropies over labelled positions, and their count.

    Returning the sum (not the mean) lets callers average over tokens across batches and devices.
    """
    losses, _ = token_losses(
        model, input_ids, attention_mask, labels, chunk_tokens, completion_only_head, position_ids=position_ids
    )
    return losses.sum(), int(losses.numel())


def sequence_losses(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    completion_only_head: bool = True,
    position_ids: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
    compute: TokenLosses | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, or per example with ``segments`` (a packed batch: each token's example index, -1 on
    padding): the summed completion cross-entropy (minus its log-probability) and its token count.
    ``compute``: how token losses are computed (a sharded model's own: :func:`token_losses`)."""
    losses, rows = token_losses(
        model,
        input_ids,
        attention_mask,
        labels,
        completion_only_head=completion_only_head,
        position_ids=position_ids,
        compute=compute,
    )
    n = input_ids.shape[0]
    if segments is not None:  # the example of each loss is the example of its target token
        rows, n = segments[:, 1:][labels[:, 1:] != IGNORE_INDEX], int(segments.max()) + 1
    sums = torch.zeros(n, dtype=losses.dtype, device=losses.device).index_add_(0, rows, losses)
    counts = torch.zeros(n, dtype=torch.long, device=losses.device).index_add_(0, rows, torch.ones_like(rows))
    return sums, counts


def token_losses(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    chunk_tokens: int = 2048,
    completion_only_head: bool = True,
    position_ids: torch.Tensor | None = None,
    compute: TokenLosses | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy at every labelled position (float32), and the batch row of each.

    ``position_ids`` restarting at 0 with ``attention_mask=None`` is a packed batch: transformers then
    confines attention to each example (:mod:`lora_lightning.model.packing` checks that it does).
    A sharded model computes them with the ``compute`` :func:`~.sharding.shard_model` returned (an
    FSDP forward method), so that its root weights (embeddings, head) are gathered for the body and
    the head alike; otherwise :func:`compute_token_losses` on ``model``.
    """
    if compute is None:
        return compute_token_losses(
            model, input_ids, attention_mask, labels, chunk_tokens, completion_only_head, position_ids
        )
    return compute(input_ids, attention_mask, labels, chunk_tokens, completion_only_head, position_ids)


def compute_token_losses(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    chunk_tokens: int = 2048,
    completion_only_head: bool = True,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_losses` on the model as it is."""
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    targets = shift_labels[mask]
    rows = mask.nonzero()[:, 0]
    if not (completion_only_head and supports_completion_only_head(model)):
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).logits
        return F.cross_entropy(logits[:, :-1][mask].float(), targets, reduction="none"), rows
    hf = unwrap_causal_lm(model)
    hidden = hf.base_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    )[0]
    picked = hidden[:, :-1][mask]
    head = hf.get_output_embeddings()
    return chunked_token_losses(head, picked, targets, chunk_tokens), rows  # no chunk's logits kept for backward
