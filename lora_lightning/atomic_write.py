"""Writing a file or a folder all at once, and never over what the project did not write.

Used for every output that a later run or a user trusts (adapter exports, checkpoints, the
converted base model, predictions, result tables), so a crash or kill mid-write leaves either the
old output or the new one, never half of one.

Every folder written by :func:`atomic_folder` carries a manifest of its own files
(:data:`MANIFEST`, written last); so does the folder of a file written with ``atomic_file(...,
record=True)``. A non-empty folder or an existing file that no manifest claims is the user's: it is
refused (one line, :class:`~lora_lightning.errors.UserInputError`) unless ``overwrite`` is given.
The working directory, its ancestors, the home folder, the filesystem root and any folder holding
``.git`` are refused always.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_lightning.errors import UserInputError

MANIFEST = ".lora_lightning_manifest.json"
AT_FDCWD = -100
RENAME_EXCHANGE = 2


@contextmanager
def atomic_folder(target: str | os.PathLike, overwrite: bool = False, flag: str = "--overwrite") -> Iterator[Path]:
    """Yields a temporary folder; on success it replaces ``target``, on error it is removed.

    ``target`` is checked first (:func:`check_writable_folder`), so a refused folder costs no work,
    and again just before the swap (a file a user dropped in meanwhile is not deleted). The new
    folder gets its manifest, its files and folders are fsynced, then it takes the target's place
    (:func:`replace_folder`)."""
    target = Path(target)
    check_writable_folder(target, overwrite, flag)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        write_manifest(tmp, sorted(entries(tmp)))
        make_readable(tmp)
        fsync_tree(tmp)
        check_writable_folder(target, overwrite, flag)
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w", fsync: bool = False, record: bool = False) -> Iterator:
    """Yields an open temporary file beside ``target``; on success it is (fsynced and) renamed over
    ``target``, on error removed. Temporary files left by a process killed mid-write are removed
    by the next write of the same target. ``record``: add the file to its folder's manifest, for
    outputs at paths a user chose (checked with :func:`check_writable_file`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        stale.unlink(missing_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if record:  # after the file: a crash in between leaves it unclaimed, refused rather than deleted
        listed = read_manifest(target.parent) or set()
        write_manifest(target.parent, sorted(listed | {target.name}))


# -- what the project wrote ----------------------------------------------------------------------


def entries(folder: Path) -> set[str]:
    """Every file and folder under ``folder`` (symlinks not followed), as relative POSIX paths,
    the manifest itself left out."""
    found = set()
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        found.update((base / name).as_posix() for name in dirs + files)
    found.discard(MANIFEST)
    return found


def read_manifest(folder: Path) -> set[str] | None:
    """The paths the project recorded as its own in ``folder``; None when it has no readable manifest."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        paths = data["paths"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return {p for p in paths if isinstance(p, str)} if isinstance(paths, list) else None


def write_manifest(folder: Path, paths: list[str]) -> None:
    with atomic_file(folder / MANIFEST) as f:
        json.dump({"written_by": "lora_lightning", "paths": paths}, f, indent=0)


# -- refusing ------------------------------------------------------------------------------------


def protected_reason(target: Path) -> str | None:
    """Why ``target`` may never be replaced, even with overwrite; None when it may."""
    real, cwd = target.resolve(), Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        return "the current directory or a folder holding it"
    if real == Path.home().resolve() or real == Path(real.anchor):
        return "the home folder or the filesystem root"
    if (real / ".git").exists():
        return "a project checkout (it holds .git)"
    return None


def check_writable_folder(target: str | os.PathLike, overwrite: bool = False, flag: str = "--overwrite") -> None:
    """Raises :class:`UserInputError` (one line) when writing ``target`` through :func:`atomic_folder`
    would delete anything the project did not write. Callers call it up front too, before loading
    a model, so a refusal costs nothing. ``flag`` is the option that lifts the check, for the message."""
    target = Path(target)
    reason = protected_reason(target)
    if reason:
        raise UserInputError(f"refusing to replace {str(target)!r}: it is {reason}; choose an empty or new folder")
    if overwrite or not (target.exists() or target.is_symlink()):
        return
    if target.is_symlink() or not target.is_dir():
        raise UserInputError(
            f"output folder {str(target)!r} exists and is not a folder; "
            f"choose another path, or pass {flag} to replace it"
        )
    present = entries(target)
    foreign = sorted(present - (read_manifest(target) or set()))
    if present and (foreign or (target / MANIFEST).is_symlink()):
        raise UserInputError(
            f"output folder {str(target)!r} exists and is not empty, and holds files lora_lightning did not write "
            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
            f"choose an empty or new folder, or pass {flag} to replace it whole"
        )


def check_writable_file(target: str | os.PathLike, overwrite: bool = False, flag: str = "--overwrite") -> None:
    """Raises :class:`UserInputError` (one line) when ``target`` exists and is not a file the project
    wrote (recorded in its folder's manifest by ``atomic_file(..., record=True)``), unless ``overwrite``;
    a folder is refused always."""
    target = Path(target)
    if target.is_dir():
        raise UserInputError(f"output file {str(target)!r} is a folder; give a file path")
    if overwrite or not (target.exists() or target.is_symlink()):
        return
    if target.is_symlink() or target.name not in (read_manifest(target.parent) or set()):
        raise UserInputError(
            f"output file {str(target)!r} exists and lora_lightning did not write it; "
            f"choose another path, or pass {flag} to replace it"
        )


# -- durable, atomic replacement -----------------------------------------------------------------


def make_readable(folder: Path) -> None:
    """Temporary folders and files are created private (0700/0600); outputs are ordinary files."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Each file, then each folder bottom-up, then ``folder``: on disk before it replaces anything,
    as checkpoints are (:mod:`lora_lightning.checkpoint_io`)."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            if not Path(root, name).is_symlink():
                fsync_path(Path(root, name))
        fsync_path(Path(root))


def rename_exchange(a: Path, b: Path) -> bool:
    """Swaps ``a`` and ``b`` in one step with Linux's ``renameat2(RENAME_EXCHANGE)`` (glibc 2.28+);
    False when that is not available here (another OS, an old libc, a filesystem without it) or
    ``b`` does not exist."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOENT, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_folder(new: Path, target: Path) -> None:
    """Put ``new`` at ``target`` with no moment at which ``target`` is missing: on Linux the two
    are swapped in one ``renameat2(RENAME_EXCHANGE)`` and the old one, now at ``new``, removed.
    Where that is unavailable (macOS, Windows, old libc, some network filesystems) the old folder
    is moved aside and ``new`` renamed in: two renames, with a moment between them without a target."""
    if rename_exchange(new, target):
        remove(new)
    else:
        old = None
        if target.exists() or target.is_symlink():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(new, target)
        if old is not None:
            remove(old)
    fsync_path(target.parent)
