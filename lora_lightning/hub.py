"""Sharing an adapter on the Hugging Face Hub: a model card from the run, an access check, the upload.

The access check runs when the export callback is built, before any model is loaded, so an offline
machine or a missing token fails at once instead of after hours of training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def model_card(
    history: Mapping[str, Any], adapter_config: Mapping[str, Any] | None, metrics_table: str | None = None
) -> str:
    """README.md for an exported adapter: base model, data, LoRA settings, losses and metrics, time."""
    base = history.get("base_model") or (adapter_config or {}).get("base_model_name_or_path")
    data = history.get("data") or {}
    val = history.get("val_loss") or []
    lines = ["---", "library_name: peft"]
    if base and not Path(str(base)).is_absolute():  # a Hub id; a local path means nothing on the Hub
        lines.append(f"base_model: {base}")
    lines += [
        "tags: [lora, peft, lightning, flan, instruction-tuning]",
        "---",
        "",
        "# LoRA adapter trained with lora_lightning",
        "",
        f"Base model: `{base}`. Prompt format: `{history.get('prompt_format', 'plain')}`; "
        f"mixing: `{history.get('mixing', 'proportional')}`.",
        "",
        "## Data",
        "",
        "| task | train examples | validation examples | dropped (too long) |",
        "| --- | --- | --- | --- |",
    ]
    for task, s in data.items():
        lines.append(f"| {task} | {s.get('train')} | {s.get('validation')} | {s.get('dropped_too_long', 0)} |")
    if adapter_config:
        keys = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "use_dora")
        lines += ["", "## LoRA settings", "", "| setting | value |", "| --- | --- |"]
        lines += [f"| {k} | {json.dumps(adapter_config.get(k))} |" for k in keys if k in adapter_config]
    lines += [
        "",
        "## Training",
        "",
        f"Optimizer steps: {history.get('global_step')}, epochs: {history.get('epoch')}, "
        f"training time: {history.get('train_seconds')} s.",
    ]
    if val:
        lines += [
            "",
            "| validation loss | step | value |",
            "| --- | --- | --- |",
            f"| before training | {val[0][0]} | {val[0][1]:.4f} |",
            f"| best | {history.get('best_step')} | {history.get('best_val_loss') or val[-1][1]:.4f} |",
        ]
    if metrics_table:
        lines += ["", "## Evaluation", "", metrics_table.strip()]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        'model = AutoPeftModelForCausalLM.from_pretrained("<this folder or repo>")',
        "```",
        "",
    ]
    return "\n".join(lines)
