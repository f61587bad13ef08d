"""Training order as a pure function of (seed, epoch, rank), and a DataLoader that resumes it.

Each epoch is a seeded permutation split across ranks (torch's ``DistributedSampler`` does the
permutation, so Lightning leaves it in place under DDP). :class:`ResumableLoader` counts the
batches the training loop has taken in the current epoch and exposes that through the
``state_dict`` / ``load_state_dict`` interface Lightning saves in every checkpoint; a run resumed
from a mid-epoch checkpoint leaves those batches out and sees exactly the batches an uninterrupted
one would: none repeated, none skipped.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from lora_lightning.data.tokenization import IGNORE_INDEX

MEGA_BATCHES = 50  # length grouping sorts within windows of this many batches


def int_column(dataset: Any, column: str) -> np.ndarray:
    """An integer column of a dataset as one int32 numpy array (``length``: each example's tokens),
    read from its Arrow files without a Python object per row."""
    return np.asarray(dataset.with_format("numpy")[column], dtype=np.int32)


class ResumableSampler(DistributedSampler):
    """Epoch-seeded, rank-sharded order; after ``resume_at = (epoch, n)`` that epoch's iteration
    leaves out its first ``n`` batches.

    The order is ``DistributedSampler``'s (a ``torch.randperm`` seeded by seed + epoch, padded to a
    multiple of the ranks, every rank taking its stride), held as one numpy array (8 bytes per
    example, not a Python list) and handed out in chunks.

    With ``lengths`` (a numpy array, one per example), batches are grouped by length (less padding):
    each window of ``MEGA_BATCHES`` batches of the shuffled order is sorted by length (longest first,
    ties in order) and cut into batches, and the batches are shuffled (seeded), the one short batch
    last so batch boundaries stay put.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        batch_size: int = 1,
        lengths: Sequence[int] | np.ndarray | None = None,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.lengths = np.asarray(lengths) if lengths is not None else None
        self.skip_batches = 0
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def order(self) -> np.ndarray:
        """This rank's indices for the current epoch, as ``DistributedSampler.__iter__`` makes them."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        permutation = torch.randperm(len(self.dataset), generator=generator).numpy()  # type: ignore[arg-type]
        padded = np.resize(permutation, self.total_size)  # repeats from the start, as the list padding does
        return padded[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        resume, self.resume_at = self.resume_at, None
        self.skip_batches = resume[1] if resume is not None and resume[0] == self.epoch else 0
        indices = self.order()
        if self.lengths is not None:
            indices = self.group_by_length(indices)
        return chunked(indices[self.skip_batches * self.batch_size :])

    def group_by_length(self, indices: np.ndarray) -> np.ndarray:
        size = self.batch_size
        window = np.arange(len(indices)) // (size * MEGA_BATCHES)
        by_length = indices[np.lexsort((-self.lengths[indices], window))]  # stable: ties keep their order
        full = len(by_length) // size
        batches = list(range(full))
        random.Random(f"{self.seed}:{self.epoch}:{self.rank}").shuffle(batches)
        return np.concatenate([by_length[: full * size].reshape(full, size)[batches].ravel(), by_length[full * size :]])


def chunked(indices: np.ndarray, chunk: int = 4096) -> Iterator[int]:
    """The indices as Python ints, converting ``chunk`` at a time."""
    for start in range(0, len(indices), chunk):
        yield from indices[start : start + chunk].tolist()


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`ResumableSampler` whose position Lightning checkpoints, and
    that tells each batch what its optimizer step holds.

    Batches go out one accumulation window (``accumulate`` batches, aligned to the epoch's start)
    at a time; each carries ``step_tokens``, the completion tokens of its whole window on this rank,
    and ``step_end``, true on the window's last batch: what a per-token loss of the whole step
    needs (:mod:`lora_lightning.model.step_loss`). A window holds only batches that train in its
    optimizer step, as Lightning steps: the epoch's last window may be short (an epoch length that
    is not a multiple of ``accumulate``, or one that ``limit_train_batches`` cuts: ``epoch_batches``
    returns Lightning's ``num_training_batches``, read as each epoch starts, and the loader ends the
    epoch there), and a window resumed in its middle holds the batches after the resume point.

    The loader counts the batches it has handed to the training loop in the current epoch;
    ``state_dict`` is ``{epoch, batches}``, and after ``load_state_dict`` the iteration of that same
    epoch starts after those batches (any other epoch starts from its beginning).
    """

    def __init__(
        self,
        *args: Any,
        sampler: ResumableSampler,
        accumulate: int = 1,
        epoch_batches: Callable[[], float] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, sampler=sampler, **kwargs)
        self.accumulate = max(int(accumulate), 1)
        self.epoch_batches = epoch_batches
        self.epoch_counted = 0
        self.batches_counted = 0

    def batches_this_epoch(self) -> int:
        """How many batches the training loop takes from an epoch: all, or fewer when
        ``limit_train_batches`` cuts it (Lightning's ``num_training_batches``)."""
        limit = self.epoch_batches() if self.epoch_batches is not None else float("inf")
        return int(min(len(self), limit))

    def __iter__(self) -> Iterator[Any]:
        return self._by_window(super().__iter__())

    def _by_window(self, batches: Iterator[Any]) -> Iterator[Any]:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        total, pending, position = self.batches_this_epoch(), [], 0
        for number, batch in enumerate(batches):
            if number == 0:  # the sampler has now picked its epoch and its starting batch
                self.epoch_counted, self.batches_counted = sampler.epoch, sampler.skip_batches
                position = sampler.skip_batches
            if position >= total:
                break  # beyond what the training loop takes: in no window
            pending.append(batch)
            position += 1
            if position % self.accumulate == 0 or position >= total:
                yield from self._release(pending)
                pending = []
        yield from self._release(pending)

    def _release(self, window: list[dict]) -> Iterator[dict]:
        tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in window)
        for i, batch in enumerate(window):
            batch["step_tokens"], batch["step_end"] = tokens, i == len(window) - 1
            self.batches_counted += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch_counted), "batches": int(self.batches_counted)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.sampler.resume_at = (int(state_dict["epoch"]), int(state_dict["batches"]))  # type: ignore[union-attr]
