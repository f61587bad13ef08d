"""Sharing an adapter on the Hugging Face Hub: the access check and the upload.

The access check runs when the export callback is built, before any model is loaded, so an offline
machine or a missing token fails at once instead of after hours of training. What is uploaded (the
adapter folder and its model card) is written by :mod:`lora_lightning.export`.
"""

from __future__ import annotations

import os
from pathlib import Path

from lora_lightning.errors import UserInputError, first_line


def check_hub_access(repo_id: str | None) -> None:
    """Raises a one-line error unless ``repo_id`` is a valid name and the Hub answers with a login."""
    if not repo_id or repo_id.count("/") > 1 or repo_id.strip("/") != repo_id:
        raise UserInputError(f"push_to_hub needs a hub repository name like 'user/my-adapter', got {repo_id!r}")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", ""):
        raise UserInputError(
            "push_to_hub is on but HF_HUB_OFFLINE is set: the Hub cannot be reached; unset it or turn push_to_hub off"
        )
    from huggingface_hub import HfApi

    try:
        HfApi().whoami()
    except Exception as err:  # network errors, missing or bad token: all mean "cannot push"
        raise UserInputError(
            f"push_to_hub is on but the Hub cannot be used ({first_line(err)}); "
            "check the network and run `hf auth login`, or turn push_to_hub off"
        ) from None


def push_folder(folder: str | Path, repo_id: str, private: bool = True) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        ignore_patterns=[".*"],
        commit_message="Upload LoRA adapter from lora_lightning",
    )
    return str(getattr(info, "commit_url", repo_id))
