"""AdamW with weight-decay groups, and a warmup-then-decay learning-rate schedule."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def decay_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (matrices) and not decayed (biases, norms)."""
    decay, no_decay = [], []
    for _name, p in named_params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def warmup_then_decay(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_ratio`` of the steps, then ``linear`` or ``cosine`` decay to 0."""
    from transformers import get_scheduler

    warmup = int(round(warmup_ratio * total_steps))
    return get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1))
