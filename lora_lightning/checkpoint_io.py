"""Lightning checkpoints written atomically and read without pickle.

``save_checkpoint`` writes ``.<name>.tmp-<pid>`` in the checkpoint's own folder, fsyncs it and
renames it over the target, so a kill at any moment leaves the previous ``last.ckpt`` intact (a
temporary file left by a SIGKILL mid-write is removed by the next save).
``load_checkpoint`` uses ``torch.load(weights_only=True)``: a checkpoint cannot run code, and a
truncated or corrupt one gives a one-line error naming the file instead of a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lora_lightning.atomic_write import atomic_file
from lora_lightning.errors import UserInputError, first_line


class CheckpointError(UserInputError):
    """A checkpoint file that cannot be read."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Temp file + fsync + rename for every checkpoint; ``weights_only`` loading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        with atomic_file(path, "wb", fsync=True) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        return read_checkpoint(path, map_location)


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint as a dict, or a CheckpointError saying why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, bad pickle opcodes, disallowed globals, ...
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated, corrupt or unsafe ({first_line(err, 200)}); "
            "resume from another one (e.g. ckpt/best-*.ckpt) or start afresh"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a Lightning checkpoint (no state_dict)")
    return checkpoint
