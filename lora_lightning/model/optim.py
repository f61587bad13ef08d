"""The optimizer (weight-decay groups, or LoRA+ groups), and a warmup-then-decay learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from lora_lightning.model.lora import LoRAConfigError


def decay_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (matrices) and not decayed (biases, norms)."""
    decay, no_decay = [], []
    for _name, p in named_params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def check_loraplus_ratio(ratio: float | None, lora: bool) -> None:
    """None (off) or a finite ratio > 0 on a LoRA run (there is no lora_B to speed up otherwise)."""
    if ratio is None:
        return
    if not math.isfinite(ratio) or ratio <= 0:
        raise LoRAConfigError(f"loraplus_lr_ratio must be a finite number > 0 (or null: off), got {ratio!r}")
    if not lora:
        raise LoRAConfigError("loraplus_lr_ratio needs LoRA (model.lora true or model.adapter): it scales lora_B")


def build_optimizer(
    model: Any,
    optimizer_class: Callable[..., torch.optim.Optimizer],
    lr: float,
    weight_decay: float,
    loraplus_lr_ratio: float | None = None,
) -> torch.optim.Optimizer:
    """``optimizer_class`` over the trainable weights of ``model`` at ``lr``: in weight-decay groups, or
    with ``loraplus_lr_ratio`` in peft's LoRA+ groups."""
    if loraplus_lr_ratio is not None:
        return loraplus_optimizer(model, optimizer_class, lr, weight_decay, loraplus_lr_ratio)
    groups = decay_groups(model.named_parameters(), weight_decay)
    return optimizer_class([{**g, "lr": lr} for g in groups])


def loraplus_optimizer(
    model: Any, optimizer_class: Callable[..., torch.optim.Optimizer], lr: float, weight_decay: float, ratio: float
) -> torch.optim.Optimizer:
    """LoRA+ (Hayou et al. 2024): peft's ``create_loraplus_optimizer`` groups, ``lora_B`` (and, peft's
    choice, every trained 1-D weight: biases, DoRA magnitudes) at ``ratio x lr``, the rest (``lora_A``)
    at ``lr``, matrices decayed by ``weight_decay``.

    peft calls ``optimizer_cls(groups, lr=lr)`` and reads ``optimizer_cls.__name__``. A LightningCLI
    optimizer is a ``functools.partial`` of the class holding the user's other arguments (no name),
    so it goes in wrapped: each group already carries its learning rate, and the groups peft leaves
    empty (LoRA on embeddings, trained biases) are dropped rather than handed to the optimizer.
    """
    from peft.optimizers import create_loraplus_optimizer

    def build(groups: list[dict], **_defaults: Any) -> torch.optim.Optimizer:
        return optimizer_class([g for g in groups if g["params"]])

    build.__name__ = getattr(getattr(optimizer_class, "func", optimizer_class), "__name__", "optimizer")
    return create_loraplus_optimizer(model, build, lr=lr, loraplus_lr_ratio=ratio, loraplus_weight_decay=weight_decay)


def warmup_then_decay(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_ratio`` of the steps, then ``linear`` or ``cosine`` decay to 0.

    A multiplier per step on each group's own initial learning rate, so LoRA+'s faster ``lora_B``
    groups warm up and decay with the rest and keep their ratio throughout."""
    from transformers import get_scheduler

    warmup = int(round(warmup_ratio * total_steps))
    return get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1))
