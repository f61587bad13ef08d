"""The run's loss curves as a small PNG beside the model card: training loss per optimizer step and
the validation (selection) loss at each validation, so a reader of the card sees whether and when
the adapter stopped improving without opening TensorBoard.

Drawn with matplotlib's Agg canvas on a standalone ``Figure``: no pyplot, no GUI backend and no
global state, so it works on a headless machine and inside a training process alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

LOSS_PLOT = "loss_curves.png"
SIZE_INCHES = (6.0, 3.5)
DPI = 100  # 600 x 350 pixels: readable on a Hub card, a few tens of kB


def plot_loss_curves(history: Mapping[str, Any], path: str | Path) -> bool:
    """Writes the PNG of ``history``'s ``train_loss`` and ``val_loss`` (``[[step, loss], ...]``, as
    in ``training_history.json``) to ``path``; False, and nothing written, when there is no point."""
    # a non-finite loss (a skipped step under model.nonfinite=skip) would break the axis scaling
    train = [(step, loss) for step, loss in history.get("train_loss") or [] if math.isfinite(loss)]
    val = [(step, loss) for step, loss in history.get("val_loss") or [] if math.isfinite(loss)]
    if not train and not val:
        return False
    fig = Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        steps, losses = zip(*train)
        marker = "." if len(train) <= 50 else None
        ax.plot(steps, losses, color="tab:blue", linewidth=1.2, marker=marker, label="training (per step)")
    if val:
        steps, losses = zip(*val)
        ax.plot(steps, losses, color="tab:orange", marker="o", markersize=4, label="validation (selection rows)")
    best = history.get("best_step")
    if best is not None and history.get("best_val_loss") is not None:
        ax.plot([best], [history["best_val_loss"]], "*", color="tab:red", markersize=10, label=f"best (step {best})")
    base = Path(str(history.get("base_model") or "base model")).name
    ax.set_title(f"LoRA on {base}: loss per completion token", fontsize=10)
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, format="png", dpi=DPI)
    return True
