"""Writing a folder all at once: into a temporary sibling, then renamed into place.

Used for every output that a later run or a user trusts (adapter exports, the converted base
model), so a crash or kill mid-write leaves either the old folder or the new one, never half.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary folder; on success it replaces ``target``, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        make_readable(tmp)
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_readable(folder: Path) -> None:
    """Temporary folders and files are created private (0700/0600); outputs are ordinary files."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def replace_folder(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``; an old folder is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
