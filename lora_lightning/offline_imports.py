"""Imports of optional packages that must not reach the network.

bitsandbytes (the ``[qlora]`` extra), when its import finds a CPU with AVX-512 BF16, asks the
``kernels`` package to download a faster 4-bit kernel from the Hugging Face Hub, and warns when it
cannot. peft and transformers import bitsandbytes whenever it is installed, so
``lora_lightning/__init__.py`` imports it first, through :func:`import_bitsandbytes`: no code path
of this project downloads kernels at run time (bitsandbytes uses the kernels it ships).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from typing import Any

ABSENT = object()


def import_bitsandbytes() -> Any:
    """bitsandbytes, imported with ``kernels`` reading as absent (and its warning about that not
    shown); a ``kernels`` installed stays importable afterwards. ImportError when bitsandbytes is
    not installed."""
    if sys.modules.get("bitsandbytes") is not None:  # imported already (None: marked absent)
        return sys.modules["bitsandbytes"]
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    saved = sys.modules.get("kernels", ABSENT)
    sys.modules["kernels"] = None  # type: ignore[assignment]  # `import kernels` raises ImportError
    try:
        import bitsandbytes
    finally:
        if saved is ABSENT:
            del sys.modules["kernels"]
        else:
            sys.modules["kernels"] = saved
    return bitsandbytes


def import_bitsandbytes_if_installed() -> None:
    """:func:`import_bitsandbytes` when bitsandbytes is installed, before peft or transformers import it."""
    if "bitsandbytes" not in sys.modules and importlib.util.find_spec("bitsandbytes") is not None:
        import_bitsandbytes()
