"""LoRA r=16 vs full fine-tuning on GPT-2 medium and large architectures (the guide's memory table).

Random weights from the GPT-2 configs (memory and speed do not depend on the values), the same
batch and length for both modes, bf16 autocast, AdamW, the project's completion-only loss. LoRA runs
as the project runs it by default under ``bf16-mixed``: the frozen base in bfloat16, the adapter (and
so its gradients and AdamW state) in float32. Full fine-tuning keeps every weight in float32.

Each (model, mode) runs in a fresh process, so its peak memory is its own. Memory is measured, not
computed: the process's peak resident set size (``ru_maxrss``; also shown less the RSS the process
had before the model was built), and on a GPU ``torch.cuda.max_memory_allocated``. Checkpoint sizes are
those of files written to disk after the timed steps and then deleted: the exported weights
(``save_pretrained``: the adapter's ``adapter_model.safetensors``, or the whole model's safetensors)
and a checkpoint of what trains plus the AdamW state (``torch.save``, like the project's ``.ckpt``).

    python benchmarks/lora_vs_full.py [--device cuda] [--smoke]
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

REPO = Path(__file__).resolve().parents[1]
ARCHS = {
    "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20),
    "tiny": dict(n_embd=64, n_layer=2, n_head=2),
}


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def worker(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from lora_lightning.model.building import trainable_to_float32
    from lora_lightning.model.lora import apply_lora
    from lora_lightning.model.loss import completion_loss

    before = rss_mb()
    torch.manual_seed(0)
    base_dtype = torch.bfloat16 if args.mode == "lora" else torch.float32  # built in that dtype: no float32 copy
    model = AutoModelForCausalLM.from_config(GPT2Config(**ARCHS[args.arch]), dtype=base_dtype).to(args.device)
    if args.mode == "lora":
        model = apply_lora(model, r=16, alpha=32, dropout=0.1)
        trainable_to_float32(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch_size, args.length), device=args.device)
    labels = ids.clone()
    labels[:, : args.length - args.completion] = -100  # a prompt, then the completion
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
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before any file is written
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        export = Path(tmp) / "export"
        model.save_pretrained(export, safe_serialization=True)  # LoRA: the adapter only
        ckpt = Path(tmp) / "trainable.ckpt"
        trained = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"state_dict": trained, "optimizer_states": [optimizer.state_dict()]}, ckpt)
        export_mb, ckpt_mb = folder_mb(export), ckpt.stat().st_size / 2**20
    result = {
        "arch": args.arch,
        "mode": args.mode,
        "trainable": sum(p.numel() for p in params),
        "total": sum(p.numel() for p in model.parameters()),
        "base_dtype": str(base_dtype).removeprefix("torch."),
        "step_s": statistics.median(times),
        "rss_before_mb": before,
        "peak_rss_mb": peak_rss,
        "peak_gpu_mb": peak_gpu,
        "export_mb": export_mb,
        "ckpt_mb": ckpt_mb,
    }
    Path(args.out).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--completion", type=int, default=32, help="completion tokens per row (the rest is prompt)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--archs", default="gpt2-medium,gpt2-large")
    parser.add_argument("--workdir", default=None, help="where checkpoint files are written, measured and deleted")
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
                cmd = [sys.executable, __file__, "--worker", "--arch", arch, "--mode", mode, "--out", str(out)]
                cmd += ["--device", args.device, "--batch-size", str(args.batch_size), "--length", str(args.length)]
                cmd += ["--completion", str(args.completion), "--steps", str(args.steps)]
                cmd += ["--workdir", args.workdir] if args.workdir else []
                env = {**os.environ, "PYTHONWARNINGS": "ignore"}
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    sys.exit(f"{arch} {mode} failed:\n{done.stderr[-4000:]}")
                rows.append(json.loads(out.read_text()))
                print(f"{arch} {mode}: {rows[-1]['step_s']:.2f} s/step, {rows[-1]['peak_rss_mb']:.0f} MB", flush=True)
    gpu = args.device == "cuda"
    lines = [
        f"LoRA vs full fine-tuning, {date.today()}, {platform.machine()} ({os.cpu_count()} CPU cores), device "
        f"{args.device}; batch {args.batch_size} x {args.length} tokens ({args.completion} of completion), bf16 "
        f"autocast, AdamW, median of {args.steps} steps after 1 warm-up; LoRA r=16 on attn.c_attn, attn.c_proj over "
        "a bfloat16 frozen base, full fine-tuning in float32. Peak RSS: ru_maxrss of a fresh process per row (and "
        "less the RSS before the model was built)"
        + ("; peak GPU: torch.cuda.max_memory_allocated" if gpu else "")
        + ". Files: written to disk, then measured.",
        "",
        "| model | mode | trainable params | base | peak RSS (MB) | peak RSS less start (MB) | "
        + ("peak GPU (MB) | " if gpu else "")
        + "s/step | exported weights (MB) | trainable + AdamW checkpoint (MB) |",
        "| --- | --- | --- | --- | --- | --- | " + ("--- | " if gpu else "") + "--- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['mode']} | {r['trainable']:,} of {r['total']:,} | {r['base_dtype']} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['rss_before_mb']:.0f} | "
            + (f"{r['peak_gpu_mb']:.0f} | " if gpu else "")
            + f"{r['step_s']:.2f} | {r['export_mb']:.1f} | {r['ckpt_mb']:.1f} |"
        )
    for arch in dict.fromkeys(r["arch"] for r in rows):
        full, lora = (next(r for r in rows if r["arch"] == arch and r["mode"] == m) for m in ("full", "lora"))
        key = "peak_gpu_mb" if gpu else "peak_rss_mb"
        added = [r["peak_rss_mb"] - r["rss_before_mb"] for r in (lora, full)]
        lines.append(
            f"\n{arch}: LoRA uses {100 * (1 - lora[key] / full[key]):.0f}% less peak memory "
            f"({100 * (1 - added[0] / added[1]):.0f}% less RSS counting only what the run added), its step takes "
            f"{100 * (1 - lora['step_s'] / full['step_s']):.0f}% less time, and its checkpoint is "
            f"{100 * lora['ckpt_mb'] / full['ckpt_mb']:.1f}% of full fine-tuning's."
        )
    text = "\n".join(lines) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
