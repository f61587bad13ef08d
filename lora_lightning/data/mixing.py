"""How many training examples each task contributes to the mix.

One formula covers FLAN's strategies. With ``m_i = min(size_i, cap)`` (the per-task cap, the
guide's ``-n``) and ``N = sum(m_i)`` examples in all, task i gets ``N * m_i^(1/T) / sum_j m_j^(1/T)``:

- ``proportional`` (examples-proportional with a cap, FLAN's default): T = 1, so n_i = m_i;
- ``temperature``: T > 1 flattens the mix toward small tasks (T5/FLAN temperature sampling);
- ``uniform``: T = infinity, every task gets N / k.

A task asked for more examples than it has repeats its rows (with a new template draw each time).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

STRATEGIES = ("proportional", "uniform", "temperature")


def mixture_counts(
    sizes: Mapping[str, int], strategy: str = "proportional", cap: int | None = None, temperature: float = 2.0
) -> dict[str, int]:
    """Examples per task; the counts sum to ``sum(min(size, cap))`` (largest-remainder rounding)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"data.mixing must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    capped = {t: min(n, cap) if cap is not None else n for t, n in sizes.items()}
    if strategy == "proportional":
        return capped
    total = sum(capped.values())
    if strategy == "uniform":
        weights = {t: 1.0 for t in capped}
    else:
        if temperature <= 0:
            raise ValueError(f"data.mixing_temperature must be positive, got {temperature}")
        weights = {t: m ** (1.0 / temperature) for t, m in capped.items()}
    norm = sum(weights.values())
    exact = {t: total * w / norm for t, w in weights.items()}
    counts = {t: math.floor(x) for t, x in exact.items()}
    by_remainder = sorted(exact, key=lambda t: (exact[t] - counts[t], t), reverse=True)
    for t in by_remainder[: total - sum(counts.values())]:
        counts[t] += 1
    return counts


def take_indices(size: int, count: int, seed: int) -> Sequence[int]:
    """``count`` row indices from a seeded shuffle of ``range(size)``, cycling when count > size."""
    order = list(range(size))
    random.Random(seed).shuffle(order)
    return [order[i % size] for i in range(count)]
