"""lora_lightning vs Transformers Trainer + PEFT on one fixed workload, side by side (``make bench``).

Both train the same model with the same LoRA config on the same batches, in the same order, with
the same batch size, maximum length, precision, learning rate and step count. Each run is its own
process (so peak memory is its own), runs alternate (ours, theirs, ours, theirs, ...), the first
``--warmup`` steps are not timed, and the table reports medians over rounds: real (non-padding)
tokens/s, peak memory, MFU, and the mean loss of the last steps, which must agree: the speed may
not come from doing less learning.

    python tests/benchmarks/bench.py                      # CPU, the embedded SmolLM2-135M
    python tests/benchmarks/bench.py --device cuda         # make bench-gpu
    python tests/benchmarks/bench.py --smoke --model DIR   # seconds: checks the harness runs
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
SHARED = REPO.parent / "shared" / "data"
TASKS = ["bool_q", "common_gen", "xsum"]


def workload(tokenizer_path: str, n_examples: int, max_length: int, seed: int) -> tuple[list[dict], str]:
    """The fixed examples, in order: real rows from ../shared/data when present, else the demo mix."""
    import random

    from lora_lightning.data import FlanDataModule

    files = {t: str(SHARED / f"{t}.jsonl") for t in TASKS if (SHARED / f"{t}.jsonl").is_file()}
    source = "real rows of ../shared/data" if len(files) == len(TASKS) else "the bundled demo mix"
    dm = FlanDataModule(
        tasks=TASKS,
        data_files=files if len(files) == len(TASKS) else None,
        cache_dir=None,
        max_length=max_length,
        seed=seed,
        tokenizer=tokenizer_path,
    )
    dm.setup("fit")
    rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in dm.train_set]
    random.Random(seed).shuffle(rows)
    return rows[:n_examples], source


class StepClock:
    """Per-step wall time (synchronised on GPU) and loss, shared by both runners."""

    def __init__(self, device: str):
        self.device, self.starts, self.seconds, self.losses = device, [], [], []

    def start(self) -> None:
        self._sync()
        self.starts.append(time.perf_counter())

    def stop(self, loss: float | None = None) -> None:
        self._sync()
        self.seconds.append(time.perf_counter() - self.starts[-1])
        if loss is not None:
            self.losses.append(loss)

    def _sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()


def run_ours(args, model_path: str, examples: list[dict], clock: StepClock) -> None:
    import lightning as L
    from torch.utils.data import DataLoader

    from lora_lightning.data.tokenization import CausalLMCollator
    from lora_lightning.model import LoRAModule

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            clock.start()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            clock.stop(float(outputs["loss"]))

    module = LoRAModule(
        model_name=model_path,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.1,
        learning_rate=args.lr,
        warmup_ratio=0.0,
        lr_schedule="linear",
        gradient_checkpointing=args.gradient_checkpointing,
        compile=args.compile,
        completion_only_head=not args.full_head,
    )
    collate = CausalLMCollator(pad_token_id=args.pad_id)
    loader = DataLoader(examples, batch_size=args.batch_size, shuffle=False, collate_fn=collate)
    L.seed_everything(args.seed, verbose=False)
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        precision=args.precision,
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Clock()],
        gradient_clip_val=1.0,
    )
    trainer.fit(module, train_dataloaders=loader)
    args.flops_model = module.model


def run_transformers(args, model_path: str, examples: list[dict], clock: StepClock) -> None:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from lora_lightning.data.tokenization import CausalLMCollator
    from lora_lightning.model.lora import resolve_target_modules

    class Ordered(Trainer):
        def _get_train_sampler(self, *unused, **unused_kw):
            return SequentialSampler(self.train_dataset)  # the same batches, in the same order, as ours

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            clock.start()

        def on_step_end(self, a, state, control, **kw):
            clock.stop()

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                clock.losses.append(float(logs["loss"]))

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    targets = resolve_target_modules(model.config.model_type, "auto")  # q_proj,v_proj for SmolLM2
    model = get_peft_model(
        model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32, lora_dropout=0.1, target_modules=targets)
    )
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.warmup + args.steps,
            learning_rate=args.lr,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            bf16=args.precision.startswith("bf16"),
            use_cpu=args.device == "cpu",
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            remove_unused_columns=False,
            seed=args.seed,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        Ordered(
            model=model,
            args=training,
            train_dataset=examples,
            data_collator=CausalLMCollator(args.pad_id),
            callbacks=[Clock()],
        ).train()
    args.flops_model = model


def worker(args) -> None:
    """One timed run in this process; writes its measurements as JSON."""
    import torch

    from lora_lightning.data.tokenization import CausalLMCollator
    from lora_lightning.loading import load_tokenizer, resolve_model_path
    from lora_lightning.model.flops import batch_flops, peak_flops

    model_path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(model_path)
    args.pad_id = tokenizer.pad_token_id
    n = args.batch_size * (args.warmup + args.steps)
    examples, source = workload(model_path, n, args.max_length, args.seed)
    clock = StepClock(args.device)
    {"ours": run_ours, "transformers": run_transformers}[args.worker](args, model_path, examples, clock)
    collate = CausalLMCollator(args.pad_id)
    batches = [collate(examples[i : i + args.batch_size]) for i in range(0, n, args.batch_size)][args.warmup :]
    timed = clock.seconds[args.warmup : args.warmup + args.steps]
    tokens = sum(float(b["attention_mask"].sum()) for b in batches)
    flops = sum(
        batch_flops(args.flops_model, b, completion_only_head=args.worker == "ours" and not args.full_head)
        for b in batches
    )
    dtype = torch.bfloat16 if args.precision.startswith("bf16") else torch.float32
    peak = peak_flops(torch.device(args.device), dtype)
    result = {
        "system": args.worker,
        "source": source,
        "steps": len(timed),
        "seconds": sum(timed),
        "tokens_per_s": tokens / sum(timed),
        "mfu": flops / sum(timed) / peak if peak else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None,
        "losses": clock.losses[: args.warmup + args.steps],
        "tokens": tokens,
    }
    Path(args.out).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="1 step, 1 round: check that the harness runs")
    parser.add_argument("--output", default=str(REPO / "checkpoints" / "bench" / "bench.md"))
    parser.add_argument(
        "--variants",
        action="store_true",
        help="measure this project's options instead: fp32, full-logits head, gradient checkpointing, compile",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--full-head", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.smoke:
        args.steps, args.warmup, args.rounds = 1, 1, 1
    if args.variants:
        return print(variants(args))
    results: dict[str, list[dict]] = {"ours": [], "transformers": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for system in ("ours", "transformers"):  # alternate, so drift hits both alike
                out = Path(tmp) / f"{system}-{round_}.json"
                results[system].append(run_worker(args, system, out))
                print(f"round {round_ + 1} {system}: {results[system][-1]['tokens_per_s']:.0f} tokens/s", flush=True)
    print(report(args, results))


def run_worker(args, system: str, out: Path, *flags: str, precision: str | None = None) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        system,
        "--out",
        str(out),
        "--model",
        args.model,
        "--device",
        args.device,
        "--precision",
        precision or args.precision,
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--lr",
        str(args.lr),
        "--seed",
        str(args.seed),
        *flags,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{system} {' '.join(flags)} run failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def variants(args) -> str:
    """This project's speed and memory options, one at a time against the default (bf16, head on completions)."""
    rows = [
        ("default: bf16-mixed, completion-only head", (), None),
        ("fp32 (32-true)", (), "32-true"),
        ("full-logits head", ("--full-head",), None),
        ("gradient checkpointing", ("--gradient-checkpointing",), None),
        ("torch.compile", ("--compile",), None),
    ]
    if args.smoke:
        rows = rows[:-1]  # compiling takes minutes: not for a smoke run
    lines = [
        f"Options of lora_lightning, {date.today()}, {platform.machine()} ({os.cpu_count()} CPU cores), "
        f"device {args.device}; same workload as the comparison, {args.steps} timed steps after {args.warmup} "
        "warm-up",
        "",
        "| option | tokens/s | peak RSS (MB) | MFU | loss (last steps) |",
        "| --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, flags, precision) in enumerate(rows):
            r = run_worker(args, "ours", Path(tmp) / f"v{i}.json", *flags, precision=precision)
            tail = statistics.mean(r["losses"][-3:])
            mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            lines.append(f"| {name} | {r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {mfu} | {tail:.4f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    Path(args.output).with_name("variants.md").write_text(text)
    return text


def report(args, results: dict[str, list[dict]]) -> str:
    def med(system: str, key: str) -> float | None:
        values = [r[key] for r in results[system] if r[key] is not None]
        return statistics.median(values) if values else None

    def last_loss(system: str) -> float:
        tail = max(1, min(3, args.steps))
        return statistics.median(statistics.mean(r["losses"][-tail:]) for r in results[system])

    first = results["ours"][0]
    ratio = med("ours", "tokens_per_s") / med("transformers", "tokens_per_s")
    step_gap = max(abs(a - b) for a, b in zip(results["ours"][0]["losses"], results["transformers"][0]["losses"]))
    lines = [
        f"Benchmark {date.today()} on {platform.machine()} ({os.cpu_count()} CPU cores"
        + (f", {__import__('torch').cuda.get_device_name()}" if args.device == "cuda" else "")
        + f"), device {args.device}",
        f"workload: {args.model}, LoRA r=16 alpha=32 dropout=0.1 on q_proj,v_proj, {first['source']} "
        f"(bool_q, common_gen, xsum), batch {args.batch_size}, max length {args.max_length}, {args.precision}, "
        f"{args.steps} timed steps after {args.warmup} warm-up, median of {args.rounds} alternating rounds",
        "",
        "| system | tokens/s | peak RSS (MB) | "
        + ("peak GPU (MB) | " if args.device == "cuda" else "")
        + "MFU | loss (last steps) |",
        "| --- | --- | --- | " + ("--- | " if args.device == "cuda" else "") + "--- | --- |",
    ]
    for system, name in (("ours", "lora_lightning"), ("transformers", "Transformers Trainer + PEFT")):
        mfu = med(system, "mfu")
        gpu = f"{med(system, 'peak_gpu_mb'):.0f} | " if args.device == "cuda" else ""
        lines.append(
            f"| {name} | {med(system, 'tokens_per_s'):.0f} | {med(system, 'peak_rss_mb'):.0f} | {gpu}"
            f"{'-' if mfu is None else f'{100 * mfu:.1f}%'} | {last_loss(system):.4f} |"
        )
    first_ours, first_theirs = results["ours"][0]["losses"][0], results["transformers"][0]["losses"][0]
    lines += [
        "",
        f"speed ratio (tokens/s, lora_lightning / Trainer + PEFT): **{ratio:.2f}x**",
        f"first-step loss (same batch, before any update): {first_ours:.4f} vs {first_theirs:.4f}; "
        f"largest per-step loss difference on the same batches: {step_gap:.4f}",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    return text


if __name__ == "__main__":
    main()
