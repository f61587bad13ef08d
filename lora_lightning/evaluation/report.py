"""From scored examples to metric values, and the base-vs-adapter results table (markdown and CSV)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence

from lora_lightning.data.tasks import TaskSpec
from lora_lightning.metrics import task_metric_values


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
