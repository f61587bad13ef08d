"""On-disk cache of tokenized datasets, keyed by everything that shapes them.

The key hashes the tokenizer (its vocabulary and rules, not just its name), each task's full
definition (fields, options, templates), where its rows come from (file size and time, or Hub
id), the caps and mixing, the seed, the maximum length and the prompt format. A second ``fit``
with the same data loads the arrow files instead of tokenizing again; changing any of those
re-tokenizes into a new entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lora_lightning.atomic_write import atomic_folder

CACHE_VERSION = 3  # bump when the tokenization code changes what it produces (3: long chat prompts keep the template)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps([tokenizer.eos_token_id, tokenizer.bos_token_id, getattr(tokenizer, "chat_template", None)])
    return hashlib.sha256((text + extra).encode()).hexdigest()


def file_fingerprint(path: str) -> list:
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def cache_key(parts: Mapping[str, Any]) -> str:
    def default(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            return dataclasses.asdict(obj)
        raise TypeError(f"cannot hash {type(obj).__name__} into the cache key")

    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=default)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_cached(folder: Path) -> tuple[dict[str, Any], dict] | None:
    """``({split: Dataset}, stats)`` from a complete cache entry, or None."""
    import datasets

    meta = folder / "stats.json"
    if not meta.is_file():
        return None
    stats = json.loads(meta.read_text())
    splits = {split: datasets.load_from_disk(str(folder / split)) for split in stats["splits"]}
    return splits, stats["tasks"]


def save_cached(folder: Path, splits: Mapping[str, Any], stats: Mapping[str, Any]) -> None:
    with atomic_folder(folder) as tmp:
        for split, ds in splits.items():
            ds.save_to_disk(str(tmp / split))
        (tmp / "stats.json").write_text(json.dumps({"splits": list(splits), "tasks": stats}, indent=1))
