"""From scored examples to metric values, and the base-vs-adapter results table (markdown and CSV)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence

from lora_lightning.data.tasks import TaskSpec
from lora_lightning.evaluation.metrics import (
    accuracy,
    concept_coverage,
    normalize_answer,
    rouge_l,
    sacrebleu,
    squad_scores,
)


def task_metrics(task: TaskSpec, records: Sequence[dict]) -> dict[str, float]:
    """Every metric the task names, plus completion loss and perplexity, over its scored examples."""
    scored = [r for r in records if r["tokens"]]
    tokens = sum(r["tokens"] for r in scored)
    loss = sum(r["loss_sum"] for r in scored) / tokens if tokens else float("nan")
    out = {"loss": loss, "perplexity": math.exp(min(loss, 50)) if tokens else float("nan")}
    preds = [r["prediction"] for r in records]
    refs = [r["references"] for r in records]
    for metric in task.metrics:
        if metric == "accuracy":
            out["accuracy_rank"] = accuracy([r["ranked"] == r["answer"] for r in records])
            out["accuracy_rank_norm"] = accuracy([r["ranked_norm"] == r["answer"] for r in records])
            out["accuracy_exact"] = accuracy(
                [normalize_answer(r["prediction"]) == normalize_answer(r["options"][r["answer"]]) for r in records]
            )
        elif metric == "rouge_l":
            out["rouge_l"] = rouge_l(preds, refs)
        elif metric == "coverage":
            out["coverage"] = concept_coverage(preds, [r["concepts"] for r in records])
        elif metric in ("exact_match", "f1"):
            out.update(squad_scores(preds, refs))
        elif metric == "sacrebleu":
            out["sacrebleu"] = sacrebleu(preds, refs)
    return out


def results_rows(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict]:
    """``results[mode][task][metric]`` (mode: base / adapter) as table rows with the delta."""
    modes = list(results)
    rows = []
    first = results[modes[0]]
    for task in first:
        for metric in first[task]:
            row = {"task": task, "metric": metric}
            for mode in modes:
                row[mode] = results[mode][task][metric]
            if "base" in results and "adapter" in results:
                row["delta"] = row["adapter"] - row["base"]
            rows.append(row)
    return rows


def as_markdown(rows: Sequence[dict], title: str = "") -> str:
    columns = list(rows[0])
    lines = [
        f"{title}\n" if title else "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(" --- " for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(line for line in lines if line) + "\n"


def as_csv(rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# Readable names of the table's metrics, for the Hub's model-index (its ``name`` beside the ``type``).
METRIC_NAMES = {
    "loss": "completion loss",
    "perplexity": "perplexity",
    "accuracy_rank": "accuracy (rank classification)",
    "accuracy_rank_norm": "accuracy (rank classification per character)",
    "accuracy_exact": "accuracy (exact match of the greedy answer)",
    "rouge_l": "ROUGE-L",
    "coverage": "concept coverage",
    "exact_match": "exact match",
    "f1": "F1",
    "sacrebleu": "SacreBLEU",
}


def card_section(rows: Sequence[dict], title: str) -> str:
    """The model card's evaluation section: the title that names each task's split and row count,
    the table as in ``eval_results.md``, and how to read it."""
    return (
        f"{title}.\n\n{as_markdown(rows)}\n"
        "delta = adapter - base. Loss and perplexity: lower is better; the other metrics are on a "
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
            "name": METRIC_NAMES.get(row["metric"], row["metric"]),
            "value": round(float(row["adapter"]), 4),
        }
        for row in rows
        if "adapter" in row and math.isfinite(row["adapter"])
    ]
