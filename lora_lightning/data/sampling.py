"""A training sampler whose order is a pure function of (seed, epoch, rank), and that can resume.

Each epoch is a seeded permutation split across ranks (torch's ``DistributedSampler`` does the
permutation, so Lightning leaves it in place under DDP). When an epoch's iteration starts, the
sampler asks how many batches of that epoch the (possibly restored) training loop has already
done and leaves their samples out, so a run resumed from a mid-epoch checkpoint sees exactly the
batches an uninterrupted one would: none repeated, none skipped.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sized

from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """Epoch-seeded, rank-sharded order that skips the batches ``batches_done()`` reports."""

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int = 0, batch_size: int = 1,
                 batches_done: Callable[[], int] = lambda: 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.batches_done = batches_done

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.batches_done() * self.batch_size:])
