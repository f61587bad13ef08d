"""Runs read back from their TensorBoard event files: settings (the hparams record) and headline metrics.

What TensorBoard's HPARAMS tab shows, as data: :func:`read_run` returns a run's hyperparameters and
the last value of each ``hp/`` metric, :func:`comparison_table` lays several runs out as a markdown
table, a row per run and a column per setting that differs or metric that any run has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_run(log_dir: str | Path) -> dict[str, Any]:
    """``{"run", "settings", "metrics"}`` of one run folder (``.../lightning_logs/version_N``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    settings: dict[str, Any] = {}
    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for name, value in data.session_start_info.hparams.items():
                settings[name] = getattr(value, value.WhichOneof("kind")) if value.WhichOneof("kind") else None
    metrics = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("hp/")}
    return {"run": str(log_dir), "settings": settings, "metrics": metrics}


def comparison_table(runs: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per run; the settings that differ between runs, then every ``hp/`` metric."""
    keys = sorted({k for r in runs for k in r["settings"]})
    differing = [k for k in keys if len({repr(r["settings"].get(k)) for r in runs}) > 1] if len(runs) > 1 else keys
    metrics = sorted({m for r in runs for m in r["metrics"] if not math.isnan(r["metrics"][m])})
    head = ["run", *differing, *(m.removeprefix("hp/") for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for r in runs:
        cells = [Path(r["run"]).as_posix()] + [format_setting(r["settings"].get(k, "")) for k in differing]
        cells += [format_value(r["metrics"].get(m)) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_value(value: float | None) -> str:
    if value is None or math.isnan(value):
        return ""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.4f}"


def format_setting(value: Any) -> str:
    """TensorBoard stores numbers as floats: 16.0 is shown as the 16 it was."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
