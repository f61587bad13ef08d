"""The adapter folder's model card (``README.md``): written at export, its evaluation filled in by ``test``.

Written at export with the training settings, the data and a link to the loss-curve PNG; ``test`` of
the adapter later fills in its evaluation section (the results table) and the Hub ``model-index``
metadata, so the card a reader finds on the Hub carries the numbers, and the Hub can show them,
without the run folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from lora_lightning.atomic_write import atomic_file
from lora_lightning.evaluation.report import as_markdown
from lora_lightning.metrics import display_name, lower_is_better_columns

CARD_TAGS = ["lora", "peft", "lightning", "flan", "instruction-tuning"]
CARD_TITLE = "# LoRA adapter trained with lora_lightning"
# The evaluation section lies between these two lines; ``test`` replaces what is between them, so a
# card is recognised as this project's by them and re-running ``test`` never duplicates the section.
EVALUATION_START = "<!-- lora_lightning: evaluation start -->"
EVALUATION_END = "<!-- lora_lightning: evaluation end -->"
NOT_SCORED = (
    "Not scored yet: `lora-lightning test --config <the run's config> --model.adapter <this folder>` "
    "writes the base-vs-adapter results table here."
)


QUANTIZATION_NAMES = {
    "nf4": "4-bit NF4 with double quantization (QLoRA; bitsandbytes); the adapter is plain LoRA for any base dtype",
    "fp4": "4-bit FP4 with double quantization (bitsandbytes); the adapter is plain LoRA for any base dtype",
    "int8": "8-bit LLM.int8() (bitsandbytes); the adapter is plain LoRA for any base dtype",
}


def training_settings(module: Mapping[str, Any], data: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, str]:
    """What a reader needs to repeat the training, as ``{setting: value}`` rows of the card: the
    module's and the data module's hyperparameters and the trainer's values at export (``run``:
    optimizer (the module's optimizer callable), custom_scheduler, devices, accumulate_grad_batches,
    max_epochs, max_steps, precision, gradient_clip_val). LoRA's own settings come from
    ``adapter_config.json`` instead."""
    rows: dict[str, str] = {}
    optimizer = class_name(run.get("optimizer"))
    if optimizer:
        rows["optimizer"] = optimizer
    if module.get("learning_rate") is not None:
        rows["learning rate"] = f"{module['learning_rate']:g}"
    if module.get("weight_decay") is not None:
        rows["weight decay"] = f"{module['weight_decay']:g}"
    if run.get("custom_scheduler"):
        rows["schedule"] = "`model.lr_scheduler` from the config"
    elif module.get("lr_schedule"):
        rows["schedule"] = f"{module.get('warmup_ratio') or 0:.0%} linear warmup, then {module['lr_schedule']} decay"
    batch, devices = data.get("batch_size"), run.get("devices") or 1
    accumulate = run.get("accumulate_grad_batches") or 1
    if batch:
        rows["batch"] = (
            f"{batch} examples per device x {devices} device(s) x {accumulate} accumulated = "
            f"{batch * devices * accumulate} examples per optimizer step"
        )
    if data.get("packing") is not None:
        rows["packing"] = "on" if data["packing"] else "off"
    if data.get("max_length"):
        rows["max length"] = f"{data['max_length']} tokens"
    if module.get("loraplus_lr_ratio"):
        rows["LoRA+ learning-rate ratio (lora_B / lora_A)"] = f"{module['loraplus_lr_ratio']:g}"
    if module.get("quantization"):
        rows["base quantization in training"] = QUANTIZATION_NAMES.get(module["quantization"], module["quantization"])
    if module.get("neftune_noise_alpha"):
        rows["NEFTune noise alpha"] = f"{module['neftune_noise_alpha']:g}"
    if (run.get("max_epochs") or -1) > 0:  # -1 or None: no epoch limit
        rows["epochs"] = str(run["max_epochs"])
    if (run.get("max_steps") or -1) > 0:
        rows["max steps"] = str(run["max_steps"])
    if run.get("precision"):
        rows["precision"] = str(run["precision"])
    if run.get("gradient_clip_val"):
        rows["gradient clipping"] = f"{run['gradient_clip_val']:g}"
    if data.get("seed") is not None:
        rows["seed"] = str(data["seed"])
    return rows


def class_name(factory: Any) -> str | None:
    """The class a LightningCLI callable builds: the class itself (a default like
    ``torch.optim.AdamW``), or one inside the ``functools.partial`` jsonargparse makes of a configured one;
    a string is taken as the name."""
    if isinstance(factory, str):
        return factory
    for candidate in (factory, getattr(factory, "func", None), *getattr(factory, "args", ())):
        if isinstance(candidate, type):
            return candidate.__name__
    return getattr(factory, "__name__", None)


def model_card(
    history: Mapping[str, Any],
    adapter_config: Mapping[str, Any] | None,
    metrics_table: str | None = None,
    settings: Mapping[str, str] | None = None,
    plot: str | None = None,
) -> str:
    """README.md for an exported adapter: base model, results (``metrics_table``, else a placeholder
    ``test`` fills in), training with the loss curves (``plot``: an image file beside the card) and
    ``settings`` (:func:`training_settings`), LoRA settings, data, use."""
    base = history.get("base_model") or (adapter_config or {}).get("base_model_name_or_path")
    data = history.get("data") or {}
    val = history.get("val_loss") or []
    hub_base = base if base and not Path(str(base)).is_absolute() else None  # a local path means nothing on the Hub
    meta = ModelCardData(library_name="peft", base_model=hub_base, pipeline_tag="text-generation", tags=CARD_TAGS)
    lines = [
        "---",
        meta.to_yaml(),
        "---",
        "",
        CARD_TITLE,
        "",
        f"Base model: `{base}`. Prompt format: `{history.get('prompt_format', 'plain')}`; "
        f"mixing: `{history.get('mixing', 'proportional')}`.",
        "",
        "## Evaluation",
        "",
        EVALUATION_START,
        "",
        (metrics_table or NOT_SCORED).strip(),
        "",
        EVALUATION_END,
        "",
        "## Training",
        "",
        f"Optimizer steps: {history.get('global_step')}, epochs: {history.get('epoch')}, "
        f"training time: {history.get('train_seconds')} s.",
    ]
    if plot:
        lines += ["", f"![loss curves]({plot})"]
    if val:
        lines += [
            "",
            "| validation loss | step | value |",
            "| --- | --- | --- |",
            f"| before training | {val[0][0]} | {val[0][1]:.4f} |",
            f"| best | {history.get('best_step')} | {history.get('best_val_loss') or val[-1][1]:.4f} |",
        ]
    if settings:
        lines += ["", "### Settings", "", "| setting | value |", "| --- | --- |"]
        lines += [f"| {name} | {value} |" for name, value in settings.items()]
    if adapter_config:
        keys = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "use_dora")
        lines += ["", "## LoRA settings", "", "| setting | value |", "| --- | --- |"]
        lines += [f"| {k} | {json.dumps(adapter_config.get(k))} |" for k in keys if k in adapter_config]
    lines += [
        "",
        "## Data",
        "",
        "| task | train examples | validation examples | dropped (too long) |",
        "| --- | --- | --- | --- |",
    ]
    for task, s in data.items():
        lines.append(f"| {task} | {s.get('train')} | {s.get('validation')} | {s.get('dropped_too_long', 0)} |")
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


def card_with_evaluation(card_text: str, section: str, results: list[Mapping[str, Any]], model_name: str) -> str | None:
    """``card_text`` with its evaluation section replaced by ``section`` and its front matter's
    ``model-index`` by ``results`` (each ``{task, split, metric, name, value}``; the Hub's model card
    metadata, rendered by huggingface_hub); None when the card is not one this project wrote."""
    if EVALUATION_START not in card_text or EVALUATION_END not in card_text:
        return None
    card = ModelCard(card_text, ignore_metadata_errors=True)
    evals = [
        EvalResult(
            task_type="text-generation",
            dataset_type=r["task"],
            dataset_name=r["task"],
            dataset_split=r.get("split"),
            metric_type=r["metric"],
            metric_value=r["value"],
            metric_name=r.get("name"),
        )
        for r in results
    ]
    card.data.eval_results = evals or None
    card.data.model_name = model_name if evals else None
    head, rest = card.text.split(EVALUATION_START, 1)
    tail = rest.split(EVALUATION_END, 1)[1]
    card.text = f"{head}{EVALUATION_START}\n\n{section.strip()}\n\n{EVALUATION_END}{tail}"
    return str(card)


def write_card_evaluation(folder: str | Path, section: str, results: list[Mapping[str, Any]], model_name: str) -> bool:
    """Puts the results into ``folder/README.md`` (:func:`card_with_evaluation`), atomically; False,
    and the file left alone, when there is no README.md or it is not this project's card."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return False
    text = card_with_evaluation(path.read_text(encoding="utf-8"), section, results, model_name)
    if text is None:
        return False
    with atomic_file(path) as f:
        f.write(text)
    return True


def card_section(rows: Sequence[dict], title: str) -> str:
    """The model card's evaluation section: the title that names each task's split and row count,
    the table as in ``eval_results.md``, and how to read it."""
    lower = " and ".join(display_name(c) for c in lower_is_better_columns())
    return (
        f"{title}.\n\n{as_markdown(rows)}\n"
        f"delta = adapter - base. {lower[0].upper() + lower[1:]}: lower is better; the other metrics are on a "
        "0-100 scale, higher is better. The same table is in the run folder's `eval_results.md` and `.csv`.\n"
    )


def card_results(rows: Sequence[dict], splits: Mapping[str, str]) -> list[dict]:
    """The adapter's value of each table row, as the model card's metadata holds it
    (``{task, split, metric, name, value}``): rounded as the table shows it, so card, metadata and
    table agree; non-finite values are left out (the Hub's metadata takes numbers only)."""
    return [
        {
            "task": row["task"],
            "split": splits.get(row["task"]),
            "metric": row["metric"],
            "name": display_name(row["metric"]),
            "value": round(float(row["adapter"]), 4),
        }
        for row in rows
        if "adapter" in row and math.isfinite(row["adapter"])
    ]
