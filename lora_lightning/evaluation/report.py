"""From scored examples to metric values, and the base-vs-adapter results table (markdown and CSV)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence

from lora_lightning.data.tasks import TaskSpec
from lora_lightning.metrics import display_name, lower_is_better_columns, task_metric_values


def task_metrics(task: TaskSpec, records: Sequence[dict]) -> dict[str, float]:
    """Every metric the task names (the registry: :data:`lora_lightning.metrics.METRICS`), plus
    completion loss and perplexity, over its scored examples."""
    return task_metric_values(task.metrics, records)


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
