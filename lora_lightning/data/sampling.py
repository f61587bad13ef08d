"""A training sampler whose order is a pure function of (seed, epoch, rank), and that can resume.

Each epoch is a seeded permutation split across ranks (torch's ``DistributedSampler`` does the
permutation, so Lightning leaves it in place under DDP). When an epoch's iteration starts, the
sampler asks how many batches of that epoch the (possibly restored) training loop has already
done and leaves their samples out, so a run resumed from a mid-epoch checkpoint sees exactly the
batches an uninterrupted one would: none repeated, none skipped.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator, Sequence, Sized

from torch.utils.data import DistributedSampler

MEGA_BATCHES = 50  # length grouping sorts within windows of this many batches


class ResumableSampler(DistributedSampler):
    """Epoch-seeded, rank-sharded order that skips the batches ``batches_done()`` reports.

    With ``lengths``, batches are grouped by length (less padding): each window of
    ``MEGA_BATCHES`` batches of the shuffled order is sorted by length and cut into batches, and
    the batches are shuffled (seeded), the one short batch last so batch boundaries stay put.
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int = 0, batch_size: int = 1,
                 batches_done: Callable[[], int] = lambda: 0, lengths: Sequence[int] | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.batches_done = batches_done
        self.lengths = lengths

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self.lengths is not None:
            indices = self.group_by_length(indices)
        return iter(indices[self.batches_done() * self.batch_size:])

    def group_by_length(self, indices: list[int]) -> list[int]:
        window = self.batch_size * MEGA_BATCHES
        batches = []
        for start in range(0, len(indices), window):
            chunk = sorted(indices[start:start + window], key=lambda i: self.lengths[i], reverse=True)
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        random.Random(f"{self.seed}:{self.epoch}:{self.rank}").shuffle(full)
        return [i for b in full + [b for b in batches if len(b) < self.batch_size] for i in b]
