"""LoRA r=16 vs full fine-tuning on GPT-2 medium and large architectures (the guide's memory table).

Random weights from the GPT-2 configs (memory and speed do not depend on the values), the same
batch and length for both modes, bf16 autocast, AdamW, the project's completion-only loss. Each
(model, mode) runs in its own process so its peak memory is its own. Reported: peak RSS (and peak
GPU memory on GPU), median step time after a warm-up step, trainable parameters, and checkpoint
sizes: the exported weights (adapter, or whole model) and a Lightning ``.ckpt`` (trainable weights
plus AdamW's two moments).

    python tests/benchmarks/lora_vs_full.py [--device cuda] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARCHS = {
    "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20),
    "tiny": dict(n_embd=64, n_layer=2, n_head=2),
}


def worker(args) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from lora_lightning.model.lora import apply_lora
    from lora_lightning.model.loss import completion_loss

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**ARCHS[args.arch])).to(args.device)
    if args.mode == "lora":
        model = apply_lora(model, r=16, alpha=32, dropout=0.1)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch_size, args.length), device=args.device)
    labels = ids.clone()
    labels[:, : args.length - 32] = -100  # a prompt, then a 32-token completion
    mask = torch.ones_like(ids)
    times = []
    for step in range(args.steps + 1):
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16):
            loss_sum, count = completion_loss(model, ids, mask, labels)
        (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step is warm-up
            times.append(time.perf_counter() - start)
    trainable = sum(p.numel() for p in params)
    result = {
        "arch": args.arch,
        "mode": args.mode,
        "trainable": trainable,
        "total": sum(p.numel() for p in model.parameters()),
        "step_s": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None,
        "export_mb": trainable * 4 / 2**20,  # float32 safetensors of what trained
        "ckpt_mb": 3 * trainable * 4 / 2**20,  # + AdamW exp_avg and exp_avg_sq
    }
    Path(args.out).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--archs", default="gpt2-medium,gpt2-large")
    parser.add_argument("--smoke", action="store_true", help="the tiny architecture, 1 step: checks the harness runs")
    parser.add_argument("--output", default=str(REPO / "checkpoints" / "bench" / "lora_vs_full.md"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--arch", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.smoke:
        args.archs, args.steps = "tiny", 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            for mode in ("full", "lora"):
                out = Path(tmp) / f"{arch}-{mode}.json"
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    "--arch",
                    arch,
                    "--mode",
                    mode,
                    "--out",
                    str(out),
                    "--device",
                    args.device,
                    "--batch-size",
                    str(args.batch_size),
                    "--length",
                    str(args.length),
                    "--steps",
                    str(args.steps),
                ]
                done = subprocess.run(
                    cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
                )
                if done.returncode != 0:
                    sys.exit(f"{arch} {mode} failed:\n{done.stderr[-4000:]}")
                rows.append(json.loads(out.read_text()))
                print(f"{arch} {mode}: {rows[-1]['step_s']:.2f} s/step, {rows[-1]['peak_rss_mb']:.0f} MB", flush=True)
    gpu = args.device == "cuda"
    lines = [
        f"LoRA vs full fine-tuning, {date.today()}, {platform.machine()} ({os.cpu_count()} CPU cores), device "
        f"{args.device}; batch {args.batch_size} x {args.length} tokens, bf16 autocast, AdamW, median of "
        f"{args.steps} steps after 1 warm-up",
        "",
        "| model | mode | trainable params | peak RSS (MB) | "
        + ("peak GPU (MB) | " if gpu else "")
        + "s/step | exported weights (MB) | .ckpt with AdamW (MB) |",
        "| --- | --- | --- | --- | " + ("--- | " if gpu else "") + "--- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['mode']} | {r['trainable']:,} of {r['total']:,} | {r['peak_rss_mb']:.0f} | "
            + (f"{r['peak_gpu_mb']:.0f} | " if gpu else "")
            + f"{r['step_s']:.2f} | {r['export_mb']:.1f} | {r['ckpt_mb']:.1f} |"
        )
    for arch in dict.fromkeys(r["arch"] for r in rows):
        full, lora = (next(r for r in rows if r["arch"] == arch and r["mode"] == m) for m in ("full", "lora"))
        key = "peak_gpu_mb" if gpu else "peak_rss_mb"
        lines.append(
            f"\n{arch}: LoRA uses {100 * (1 - lora[key] / full[key]):.0f}% less peak memory and its step "
            f"takes {100 * (1 - lora['step_s'] / full['step_s']):.0f}% less time than full fine-tuning."
        )
    text = "\n".join(lines) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
