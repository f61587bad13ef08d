"""A pass over a big memory-mapped set leaves only a stretch of its file resident, reads the same rows,
and keeps each example's number; the split hashes do not change with the read order."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from lora_lightning.data import mapped_pages
from lora_lightning.data.mapped_pages import in_file_order, mapped_files, release_mapped_pages
from lora_lightning.data.split_record import iter_rows, row_id, row_ids

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps (Linux)")
ROWS = 60_000


def resident_bytes(paths: list[str]) -> int:
    """Resident bytes of this process's mappings of ``paths`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
            inside = len(fields) == 6 and fields[5] in paths
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


@pytest.fixture(scope="module")
def big_set(tmp_path_factory):
    """A memory-mapped set of 60,000 rows of about 1 KB (about 60 MB of Arrow), as ``load_dataset`` makes it."""
    import datasets

    folder = tmp_path_factory.mktemp("mapped")
    filler = "abcdefgh" * 125
    with open(folder / "rows.jsonl", "w") as f:
        f.writelines(json.dumps({"n": i, "text": f"row {i} {filler}"}) + "\n" for i in range(ROWS))
    return datasets.load_dataset("json", data_files=str(folder / "rows.jsonl"), split="train", cache_dir=str(folder))


def test_a_scattered_selection_is_read_in_file_order_with_the_same_rows(big_set):
    picked = big_set.select(np.random.default_rng(1).permutation(ROWS)[:5000]).shuffle(seed=3)
    ordered, order = in_file_order(picked)
    numbers = ordered["n"]
    assert numbers == sorted(numbers)  # front to back
    assert numbers == [picked[int(k)]["n"] for k in order[:5]] + numbers[5:]  # ordered[k] is picked[order[k]]
    assert [picked[int(k)]["n"] for k in order] == numbers
    assert in_file_order(big_set) == (big_set, None)


def test_row_ids_do_not_depend_on_the_read_order(big_set):
    picked = big_set.select(np.random.default_rng(2).permutation(ROWS)[:3000])
    expected = np.sort(np.array([row_id(row) for row in picked.to_list()], dtype="S16"))
    assert np.array_equal(row_ids(picked), expected)


def test_a_pass_keeps_only_a_stretch_of_the_file_resident(big_set, monkeypatch):
    """Old code: a pass over a shuffled selection of the rows left the whole file resident (its pages
    read in a scattered order, never let go)."""
    files = mapped_files(big_set)
    size = sum(Path(p).stat().st_size for p in files)
    assert size > 50 * 2**20
    monkeypatch.setattr(mapped_pages, "RELEASE_EVERY_ROWS", 5000)
    release_mapped_pages(files)
    shuffled = big_set.shuffle(seed=5)
    most = 0
    for number, _ in enumerate(iter_rows(in_file_order(shuffled)[0]), start=1):
        if number % 2500 == 0:
            most = max(most, resident_bytes(files))
    assert most < size / 3, (most, size)
    assert resident_bytes(files) < size / 20  # let go at the end of the pass
    assert row_ids(shuffled).shape == (ROWS,)
    assert resident_bytes(files) < size / 20


def test_releasing_pages_changes_no_data(big_set):
    files = mapped_files(big_set)
    before = big_set[ROWS - 3 :]["text"]
    assert release_mapped_pages(files) >= sum(Path(p).stat().st_size for p in files) // 2
    assert resident_bytes(files) < 2**20
    assert big_set[ROWS - 3 :]["text"] == before
    assert release_mapped_pages([]) == 0
