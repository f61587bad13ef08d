"""How many training examples each task contributes to the mix.

One formula covers FLAN's strategies. With ``m_i = min(size_i, cap)`` (the per-task cap, the
guide's ``-n``) and ``N = sum(m_i)`` examples in all, task i gets ``N * m_i^(1/T) / sum_j m_j^(1/T)``:

- ``proportional`` (examples-proportional with a cap, FLAN's default): T = 1, so n_i = m_i;
- ``temperature``: T > 1 flattens the mix toward small tasks (T5/FLAN temperature sampling);
- ``uniform``: T = infinity, every task gets N / k.

A task asked for more examples than it has repeats its rows (with a new template draw each time).
The rows a task contributes are drawn once per run (:func:`take_indices`) and every epoch trains on
all of them, so each epoch holds the stated shares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

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


def take_indices(size: int, count: int, seed: int) -> np.ndarray:
    """``count`` row indices of ``range(size)`` in a seeded random order, cycling through a seeded
    permutation when count > size.

    Drawn with numpy's ``Generator.choice`` without replacement, which for a count below 1/50 of the
    size (a big task mostly left out by a cap or its share) keeps only the drawn indices (Floyd's
    algorithm): memory in the count, not the size."""
    rng = np.random.default_rng(seed)
    if count <= size:
        return rng.choice(size, count, replace=False)
    return np.resize(rng.permutation(size), count)
