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
