"""A training sampler whose order is a pure function of (seed, epoch, rank), and that can resume.

Each epoch is a seeded permutation split across ranks (torch's ``DistributedSampler`` does the
permutation, so Lightning leaves it in place under DDP). A run resumed from a mid-epoch checkpoint
skips the samples its ranks already trained on in that epoch, so the resumed run sees exactly the
batches an uninterrupted one would: none repeated, none skipped.
"""

from __future__ import annotations

from typing import Iterator, Sized

from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """Epoch-seeded, rank-sharded order; ``skip`` samples are left out of the first epoch iterated."""

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int = 0, skip: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0  # only the epoch being resumed is shortened
        return iter(indices[skip:])
