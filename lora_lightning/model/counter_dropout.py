"""Dropout whose mask, inside a compiled CPU block, is a counter-based hash instead of torch's RNG.

Why: inductor draws a dropout mask on CPU one Philox engine per element, about 100 M draws/s on the
2-core machine (eager ``F.dropout`` about 85 M/s). LoRA puts a dropout on the input of every adapted
layer, so all-linear LoRA on SmolLM2-135M draws about 150,000 numbers per token; ``make profile``
measured those draws at 54% of a training step (5.75 of 10.55 s). Here each element's uniform number
is SplitMix64 of (one seed drawn from torch's generator per call + the element's index): integer
multiplies, shifts and xors that inductor vectorizes and fuses into the kernel that applies the mask
(measured 660 M elements/s, 6.5x, on the same machine), and that its partitioner can recompute for
backward from the seed instead of saving a mask.

The distribution is dropout's: each element is zeroed independently with probability ``p`` (to 2^-24,
the resolution of torch's own float draws) and the rest scaled by ``1 / (1 - p)``; masks differ from call
to call, and ``torch.manual_seed`` (Lightning's ``seed_everything``) reproduces them, since the seed
comes from torch's generator. SplitMix64 is the generator Java's ``SplittableRandom`` uses; it passes
BigCrush. Outside a compiled graph, on other devices (inductor's GPU dropout is already fast) or in
eval mode the module is plain ``nn.Dropout``, so it has no state and adapters and checkpoints do not
change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# SplitMix64's constants as signed int64 (torch has no uint64 arithmetic): the golden-ratio step and
# the two multipliers of its finalizer. Signed multiplication wraps like unsigned; right shifts
# are masked below so that they are logical.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)
_BITS = 24  # the uniform's resolution, as torch.rand's float32


def _logical_shift_right(z: torch.Tensor, k: int) -> torch.Tensor:
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(counter: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output for the state ``(seed + counter) * golden``, as int64 bits: the stream
    that starts at ``seed * golden``. (The seed is added before the multiply so that inductor does not
    fold ``counter * golden`` into an index expression, which overflows its int64 index printing.)"""
    z = (seed + counter) * _GOLDEN
    z = (z ^ _logical_shift_right(z, 30)) * _MIX1
    z = (z ^ _logical_shift_right(z, 27)) * _MIX2
    return z ^ _logical_shift_right(z, 31)


def keep_mask(like: torch.Tensor, p: float, seed: torch.Tensor, counter: torch.Tensor | None = None) -> torch.Tensor:
    """A bool tensor shaped like ``like``: True with probability ``1 - p``, element by element.
    ``counter`` is each element's index (computed when not given)."""
    if counter is None:
        counter = torch.arange(like.numel(), dtype=torch.int64, device=like.device).view(like.shape)
    uniform = _logical_shift_right(splitmix64(counter, seed), 64 - _BITS)  # in [0, 2^24)
    return uniform >= round(p * (1 << _BITS))


def _dropped(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    return x * keep_mask(x, p, seed) * (1.0 / (1.0 - p))


def counter_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``F.dropout(x, p, training=True)`` in distribution, with the mask from :func:`keep_mask`.

    For backward it keeps one seed and ``x`` (which the layer's input is anyway), never the mask or the
    dropped-out tensor: the product is a checkpointed region, which inductor's partitioner must
    recompute in backward from the seed (integer ops fused into the kernels that use it). Saved, the
    dropped-out input of every adapter cost a tensor per adapter per block: q, k and v (and gate and
    up) each kept their own copy of one input, down its own of the MLP's widest activation. On the
    bench workload (SmolLM2-135M, all-linear LoRA) peak RSS went from about 3.0 to 2.3 GB
    (docs/performance.md). The region holds no random op (the seed is drawn outside), so it needs no
    RNG state of its own."""
    seed = torch.randint(-(1 << 62), 1 << 62, (), dtype=torch.int64, device=x.device)
    return torch.utils.checkpoint.checkpoint(_dropped, x, seed, p, use_reentrant=False, preserve_rng_state=False)


class CounterDropout(torch.nn.Dropout):
    """``nn.Dropout`` that draws its mask with :func:`counter_dropout` when compiled on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and 0.0 < self.p < 1.0 and x.device.type == "cpu" and torch.compiler.is_compiling():
            return counter_dropout(x, self.p)
        return F.dropout(x, self.p, self.training, self.inplace)


def use_counter_dropout(module: torch.nn.Module) -> int:
    """Makes every plain ``nn.Dropout`` inside ``module`` a :class:`CounterDropout` (same ``p``, no
    state); the number changed."""
    changed = 0
    for child in module.modules():
        if type(child) is torch.nn.Dropout and child.p > 0:
            child.__class__ = CounterDropout
            changed += 1
    return changed
