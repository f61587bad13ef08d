"""Python objects from every rank, for outputs written once by rank 0 (identity on one process)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def gather_objects(items: list) -> list:
    """All ranks' items, rank by rank, on every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def unique_by(items: list[dict], key: str) -> list[dict]:
    """The first item of each ``key`` value, in order of first appearance: a distributed sampler
    pads the last ranks with repeats, and each must count once."""
    seen: dict[Any, dict] = {}
    for item in items:
        seen.setdefault(item[key], item)
    return list(seen.values())
