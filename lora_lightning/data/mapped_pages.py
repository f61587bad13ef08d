"""Read memory-mapped Arrow sets in file order, and let go of the pages a pass has read.

``datasets`` keeps every set in Arrow files mapped into memory. Reading all the rows of a big set
(the row hashes of the split record, the tokenization of a task's rows) maps each page
of its files into the process: they count in its resident memory (``RssFile``) until the set is
dropped, so a million-row file of 700 MB adds 700 MB to the peak RSS that users and their schedulers
watch, although the kernel could drop those clean pages. After such a pass, and every so many rows
within it, :func:`release_mapped_pages` tells the kernel the process no longer needs them
(``madvise(MADV_DONTNEED)`` over the read-only mappings of exactly those files, found in
``/proc/self/maps``): the next read faults them back in from the page cache or the file, so no data
changes, and the anonymous memory the process owns is never touched. Elsewhere than Linux it does
nothing.

A set that is a seeded selection of another (a carve, a mix's draw, a shuffle) reads its rows in that
order: scattered over the whole file, so each batch maps pages all over it. :func:`in_file_order`
gives the same rows sorted by their place in the file, and where each came from, so a pass reads the
file front to back and the releases keep only the last stretch resident.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterable
from functools import cache
from typing import Any

import numpy as np

MADV_DONTNEED = 4
RELEASE_EVERY_ROWS = 50_000
"""How many rows a pass reads between releases (a few tens of MB of a typical row's Arrow pages)."""


@cache
def _madvise() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.madvise.restype = ctypes.c_int
    return libc.madvise


def mapped_files(dataset: Any) -> list[str]:
    """The Arrow files a ``datasets.Dataset`` reads from (none for a set held in memory or a list)."""
    return [entry["filename"] for entry in getattr(dataset, "cache_files", None) or []]


def in_file_order(rows: Any) -> tuple[Any, np.ndarray | None]:
    """``(same_rows, order)``: the rows of a ``datasets.Dataset`` sorted by their place in its Arrow
    files, with ``same_rows[k]`` being ``rows[order[k]]``; ``order`` is None when they already are in
    file order (no index mapping), and then ``same_rows`` is ``rows``."""
    indices = getattr(rows, "_indices", None)  # datasets' index mapping of select/shuffle (no public accessor)
    if indices is None:
        return rows, None
    import datasets

    positions = np.asarray(indices.column(0)).astype(np.int64)
    order = np.argsort(positions, kind="stable")
    base = datasets.Dataset(rows.data, info=rows.info.copy(), split=rows.split)
    return base.select(positions[order]), order


def release_due(first_row: int, rows: int) -> bool:
    """Whether a pass's batch of ``rows`` rows from row ``first_row`` crosses a multiple of
    :data:`RELEASE_EVERY_ROWS` (then the pass lets its pages go)."""
    return (first_row + rows) // RELEASE_EVERY_ROWS > first_row // RELEASE_EVERY_ROWS


def read_only_mappings(paths: Iterable[str]) -> list[tuple[int, int]]:
    """``(start, end)`` of this process's read-only, unwritable mappings of ``paths``."""
    wanted = set(paths)
    if not wanted or not sys.platform.startswith("linux"):
        return []
    spans = []
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].rstrip("\n") in wanted and "w" not in fields[1]:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                spans.append((start, end))
    return spans


def release_mapped_pages(paths: Iterable[str]) -> int:
    """Drop this process's resident pages of the read-only mappings of ``paths``; returns the bytes
    of mappings advised (0 when there are none, or off Linux)."""
    advised = 0
    for start, end in read_only_mappings(paths):
        if _madvise()(start, end - start, MADV_DONTNEED) == 0:
            advised += end - start
    return advised
