"""On-disk cache of tokenized datasets, keyed by everything that shapes them.

The key hashes the tokenizer (its vocabulary and rules, not just its name), each task's full
definition (fields, options, templates), where its rows come from (each file's size and a SHA-256
of its content, so the same data under another name or time still hits and other data under the
same name and size misses; or the Hub id), the caps and mixing, the seed, the maximum length and the
prompt format. An entry is a folder of Arrow files, one or more per task and split as tokenization
wrote them, and ``stats.json`` listing them; a second ``fit`` with the same data memory-maps those
files instead of tokenizing again; changing any of those re-tokenizes into a new entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CACHE_VERSION = 4  # bump when the tokenization code changes what it produces (4: int32 ids, length columns)
CHUNK = 1 << 20


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps([tokenizer.eos_token_id, tokenizer.bos_token_id, getattr(tokenizer, "chat_template", None)])
    return hashlib.sha256((text + extra).encode()).hexdigest()


def file_fingerprint(path: str) -> list:
    """``[size, sha256 of the content]`` of a data file (about 2 s per GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return [Path(path).stat().st_size, digest.hexdigest()]


def cache_key(parts: Mapping[str, Any]) -> str:
    def default(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            return dataclasses.asdict(obj)
        raise TypeError(f"cannot hash {type(obj).__name__} into the cache key")

    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=default)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def open_split(folder: Path, names: Sequence[str], features: Any) -> Any:
    """One split: its Arrow files under ``folder``, memory-mapped and concatenated (empty: no file)."""
    import datasets

    if not names:
        return datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    parts = [datasets.Dataset.from_file(str(folder / name)) for name in names]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def arrow_files(folder: Path, parts: Sequence[Any]) -> list[str]:
    """The Arrow files of ``parts`` (datasets written under ``folder``), in order, relative to it."""
    root = Path(folder).resolve()  # datasets names its files by absolute path; ``folder`` may be relative
    return [str(Path(f["filename"]).resolve().relative_to(root)) for part in parts for f in part.cache_files]


def load_cached(folder: Path, features: Any) -> tuple[dict[str, Any], dict] | None:
    """``({split: Dataset}, stats)`` from a complete cache entry, or None."""
    meta = folder / "stats.json"
    if not meta.is_file():
        return None
    stats = json.loads(meta.read_text())
    return {split: open_split(folder, names, features) for split, names in stats["splits"].items()}, stats["tasks"]


def write_index(folder: Path, splits: Mapping[str, Sequence[Any]], stats: Mapping[str, Any]) -> None:
    """``stats.json`` of an entry whose Arrow files tokenization wrote into ``folder``."""
    files = {split: arrow_files(folder, parts) for split, parts in splits.items()}
    (folder / "stats.json").write_text(json.dumps({"splits": files, "tasks": stats}, indent=1))
