"""The tokenized sets of a run: loaded from the cache when they are there, else built and cached.

Tokenization writes each task's examples straight into Arrow files (:func:`.pipeline.build_tokenized`)
inside the new cache entry (:mod:`.cache`), which becomes the entry once complete; the datasets a run
trains on are those files memory-mapped, so memory stays flat in the data size. Without a cache
(``data.cache_dir: null``) the files go to a temporary folder removed when the process ends.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lora_lightning.atomic_write import atomic_folder
from lora_lightning.data.cache import load_cached, write_index
from lora_lightning.data.pipeline import DataSettings, build_tokenized, data_cache_key, tokenized_features
from lora_lightning.data.tasks import TaskSpec


def tokenized_sets(
    tokenizer: Any,
    tasks: Sequence[TaskSpec],
    files: Mapping[str, Mapping[str, str]],
    settings: DataSettings,
    prompt_format: str,
    cache_dir: str | None,
) -> tuple[dict[str, Any], dict[str, dict]]:
    """``({"train": ..., "validation": ...}, per-task stats)``; the log says whether the cache was hit,
    where the entry is and how long it took."""
    started = time.perf_counter()
    if cache_dir is None:
        workdir = Path(tempfile.mkdtemp(prefix="lora-lightning-tokens-"))
        atexit.register(shutil.rmtree, workdir, True)
        parts, stats = build_tokenized(tasks, files, tokenizer, prompt_format, settings, workdir)
        write_index(workdir, parts, stats)
        return load_cached(workdir, tokenized_features()) or ({}, {})
    folder = Path(cache_dir) / data_cache_key(tokenizer, tasks, files, settings, prompt_format)
    cached = load_cached(folder, tokenized_features())
    if cached is not None:
        rank_zero_info(f"Tokenized data: cache hit, loaded {folder} in {time.perf_counter() - started:.1f} s")
        return cached
    with atomic_folder(folder) as tmp:
        parts, stats = build_tokenized(tasks, files, tokenizer, prompt_format, settings, tmp)
        write_index(tmp, parts, stats)
        del parts  # the files move: open them at their final place
    rank_zero_info(f"Tokenized data cached in {folder}")
    return load_cached(folder, tokenized_features()) or ({}, {})
