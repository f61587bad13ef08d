"""Where a training step's time goes (``make profile``): ``torch.profiler`` over a few steps of the
bench workload, summed by category.

It runs what ``make bench`` runs for this project (``lora-lightning fit --config
configs/default.yaml`` through the CLI's entry point, the real rows of ``../shared/data``: bool_q,
common_gen, xsum), with one callback added that profiles steps ``--start`` to ``--start + --steps - 1``
(after the compiling warm-up) from one batch's start to the next: data, forward, backward,
optimizer, logging and callbacks. Each operator's own time (its time minus that of the operators it
called) goes to one category:

- **frozen-base GEMMs**: matrix products with neither the LoRA rank nor the vocabulary among their sizes;
- **LoRA matmuls**: matrix products with the rank among their sizes (A and B, forward and backward);
- **completion head and loss**: products with the vocabulary among their sizes, and the log-softmax,
  gather and cross-entropy work of the loss;
- **attention**: ``scaled_dot_product_attention`` and its kernels (and eager softmax over scores);
- **fused elementwise (compiled)**: inductor's C++ kernels of the compiled blocks (norms, rotary,
  activations, dropout, scaling, casts fused together);
- **elementwise (eager)**: the other tensor operators (norms, activations, dropout, casts, copies of
  the parts that run eager);
- **optimizer**: the ``_foreach``/fused operators of AdamW's update and of gradient clipping, and
  zeroing the gradients (Lightning runs forward and backward inside ``Optimizer.step``, as its closure,
  so that scope does not separate them);
- **data**: everything under the data loader's ``next``;
- **framework and Python**: the rest of the step's wall time, in no operator (Lightning's loop,
  callbacks, hooks, autograd's engine, Python).

FLOPs per category are the profiler's own counts (matrix products; ``with_flops``). The table goes to
stdout and ``--output``.

    python benchmarks/profile_step.py                    # the bench workload on CPU
    python benchmarks/profile_step.py --smoke --model DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from bench import CONFIG, SHARED, data_files  # noqa: E402

CATEGORIES = (
    "frozen-base GEMMs",
    "LoRA matmuls",
    "completion head and loss",
    "attention",
    "fused elementwise (compiled)",
    "elementwise (eager)",
    "optimizer",
    "data",
    "framework and Python",
)
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_weight_int4pack_mm"}
ATTENTION = ("scaled_dot_product", "flash_attention", "_efficient_attention", "aten::softmax", "aten::_softmax")
OPTIMIZER = ("aten::_foreach", "aten::_fused_adam", "aten::_fused_sgd", "aten::zero_")
LOSS = ("log_softmax", "cross_entropy", "nll_loss", "logsumexp", "aten::gather")


class StepProfiler(Callback):
    """Profiles steps ``start`` .. ``start + steps - 1``, each from its batch's start to the next one's,
    and writes the categorized sums as JSON to ``out``."""

    def __init__(self, out: str, start: int = 3, steps: int = 3):
        self.out, self.start, self.steps = out, start, steps
        self.profiler = None
        self.began = 0.0
        self.tokens = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import torch

        step = trainer.global_step
        if step == self.start:
            self.profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True, with_flops=True
            )
            self.profiler.__enter__()
            self.began = time.perf_counter()
        elif step == self.start + self.steps and self.profiler is not None:
            wall = time.perf_counter() - self.began
            self.profiler.__exit__(None, None, None)
            hp = pl_module.hparams
            peft = pl_module.model.peft_config["default"]
            vocab = pl_module.model.get_input_embeddings().weight.shape[0]
            events = self.profiler.events()
            rank = getattr(peft, "r", None)
            sums = categorize(events, rank, vocab)
            Path(self.out).write_text(
                json.dumps(
                    {
                        "wall_s": wall,
                        "steps": self.steps,
                        "tokens": self.tokens,
                        "sums": sums,
                        "top_kernels": top_events(events, lambda e: is_compiled_kernel(e.name)),
                        "top_eager": top_events(events, lambda e: category(e, rank, vocab) == "elementwise (eager)"),
                        "top_scopes": top_events(events, lambda e: category(e, rank, vocab) is None),
                        "target_modules": sorted(getattr(peft, "target_modules", []) or []),
                        "compile": bool(hp.get("compile")),
                        "r": rank,
                    }
                )
            )
            self.profiler = None
        if self.profiler is not None:
            self.tokens += float(batch["attention_mask"].sum())


def under(event, names: tuple[str, ...]) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if any(n in parent.name for n in names):
            return True
        parent = parent.cpu_parent
    return False


def is_compiled_kernel(name: str) -> bool:
    return name.startswith("cpp_fused") or name.startswith("graph_") or "Torch-Compiled Region" in name


def category(event, rank: int | None, vocab: int) -> str | None:
    """The category of an operator's own time; None for what is not an operator (user scopes)."""
    name = event.name
    if name.startswith(OPTIMIZER):  # Lightning runs forward and backward inside Optimizer.step (its closure)
        return "optimizer"
    if under(event, ("enumerate(DataLoader)", "DataLoader")):
        return "data"
    if name in MATMULS or name in ("aten::matmul", "aten::linear"):
        sizes = {d for shape in (event.input_shapes or []) for d in shape}
        if vocab in sizes:
            return "completion head and loss"
        if rank is not None and rank in sizes:
            return "LoRA matmuls"
        return "frozen-base GEMMs"
    if any(a in name for a in ATTENTION):
        return "attention"
    if any(a in name for a in LOSS):
        return "completion head and loss"
    if is_compiled_kernel(name):
        return "fused elementwise (compiled)"
    if name.startswith("aten::") or name.startswith("inductor::") or name.startswith("cpp_"):
        return "elementwise (eager)"
    return None


def categorize(events, rank: int | None, vocab: int) -> dict[str, dict[str, float]]:
    """``{category: {"s": own seconds, "flops": ...}}`` over the profiled operators."""
    sums: dict[str, dict[str, float]] = defaultdict(lambda: {"s": 0.0, "flops": 0.0})
    for event in events:
        kind = category(event, rank, vocab)
        if kind is None:
            continue
        sums[kind]["s"] += event.self_cpu_time_total / 1e6
        sums[kind]["flops"] += float(getattr(event, "flops", 0) or 0)
    return dict(sums)


def top_events(events, keep, count: int = 8) -> list[tuple[str, float]]:
    """The events ``keep(event)`` selects with the most own time: ``[(name, seconds), ...]``, most first."""
    sums: dict[str, float] = defaultdict(float)
    for event in events:
        if keep(event):
            sums[event.name] += event.self_cpu_time_total / 1e6
    return sorted(sums.items(), key=lambda item: -item[1])[:count]


def worker(args) -> None:
    import torch._inductor.config

    from lora_lightning.cli import main as cli_main

    torch._inductor.config.cpp.enable_kernel_profile = True  # inductor's C++ kernels show in the profile

    callback = {
        "class_path": "profile_step.StepProfiler",
        "init_args": {"out": args.out, "start": args.start, "steps": args.steps},
    }
    cli_main(
        [
            "fit",
            *("--config", str(CONFIG)),
            *("--model.model_name", args.model),
            *("--data.data_files", json.dumps(data_files(Path(args.data_dir)))),
            *("--data.cache_dir", str(Path(args.work) / "data_cache")),
            *("--trainer.default_root_dir", str(Path(args.work) / "run")),
            *("--trainer.max_epochs", "-1"),
            *("--trainer.max_steps", str(args.start + args.steps + 1)),
            *("--trainer.num_sanity_val_steps", "0"),
            *("--trainer.limit_val_batches", "0"),
            *("--trainer.enable_progress_bar", "false"),
            "--trainer.callbacks+=" + json.dumps(callback),
            *json.loads(args.overrides),
        ]
    )


def table(record: dict, peak_flops: float | None) -> str:
    wall = record["wall_s"]
    sums = dict(record["sums"])
    in_ops = sum(v["s"] for v in sums.values())
    sums["framework and Python"] = {"s": max(wall - in_ops, 0.0), "flops": 0.0}
    lines = [
        "| category | s per step | share of the step | GFLOP per step | achieved GFLOP/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    steps = record["steps"]
    for name in CATEGORIES:
        s, flops = sums.get(name, {"s": 0.0, "flops": 0.0}).values()
        rate = f"{flops / s / 1e9:,.0f}" if flops and s else ""
        lines.append(f"| {name} | {s / steps:.3f} | {100 * s / wall:.1f}% | {flops / steps / 1e9:,.1f} | {rate} |")
    total_flops = sum(v["flops"] for v in sums.values())
    lines.append(
        f"| **step** | {wall / steps:.3f} | 100% | {total_flops / steps / 1e9:,.1f} | {total_flops / wall / 1e9:,.0f} |"
    )
    for key, title in (
        ("top_kernels", "Compiled kernels"),
        ("top_eager", "Eager operators"),
        ("top_scopes", "Scopes outside any operator (their own time is part of the framework's share)"),
    ):
        if record.get(key):
            lines.append(
                f"\n{title} with the most time (s per step): "
                + "; ".join(f"{name} {seconds / steps:.3f}" for name, seconds in record[key])
            )
    tokens_s = record["tokens"] / wall
    tail = f"\n{tokens_s:,.0f} tokens/s over the profiled steps (the profiler adds its own overhead)"
    if peak_flops:
        share = 100 * total_flops / wall / peak_flops
        tail += f"; matrix-product FLOPs are {share:.1f}% of the {peak_flops / 1e12:.2f} TFLOP/s peak"
    return "\n".join(lines) + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", default=str(SHARED))
    parser.add_argument("--start", type=int, default=3, help="first profiled step (after the compiling warm-up)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--overrides", default="[]", help="extra CLI arguments, as a JSON list")
    parser.add_argument("--output", default=str(REPO / "checkpoints" / "bench" / "profile.md"))
    parser.add_argument("--smoke", action="store_true", help="1 profiled step after 1: the harness runs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if data_files(Path(args.data_dir)) is None:
        sys.exit(f"profile_step: needs bool_q, common_gen and xsum rows in {args.data_dir} (../shared/data)")
    if args.smoke:
        args.start, args.steps = 1, 1
    work = Path(tempfile.mkdtemp(prefix="profile-step-"))
    out = work / "profile.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parent)}
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--model",
        args.model,
        "--data-dir",
        args.data_dir,
        "--start",
        str(args.start),
        "--steps",
        str(args.steps),
        "--overrides",
        args.overrides,
        "--out",
        str(out),
        "--work",
        str(work),
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        sys.exit(f"profile_step: the run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    record = json.loads(out.read_text())
    import torch

    from lora_lightning.model.flops import cpu_peak_flops

    peak, where = (None, "") if args.smoke else cpu_peak_flops(torch.bfloat16)
    report = (
        f"Step profile {date.today().isoformat()}, {os.cpu_count()} CPU cores, model {args.model}, "
        f"LoRA r={record['r']} on {','.join(record['target_modules'])}, compile {record['compile']}, "
        f"overrides {args.overrides}; steps {args.start}-{args.start + args.steps - 1} "
        f"({record['tokens']:,.0f} real tokens){'; peak ' + where if where else ''}\n\n" + table(record, peak)
    )
    print(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report + "\n")


if __name__ == "__main__":
    main()
