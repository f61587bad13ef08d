"""lora_lightning vs Transformers Trainer + PEFT on one mixed-length workload of real rows (``make bench``).

The workload: real rows of ``../shared/data`` (bool_q, common_gen, xsum: answers of 2 tokens next to
summaries of 30-60, prompts of 20 to 380 tokens); without that folder the benchmark says so and stops.

This project runs exactly what ``lora-lightning fit --config configs/default.yaml`` runs, through the
CLI's own entry point, in a fresh process, with these overrides only: the model, those rows as
``data.data_files``, the step count, an output folder, no validation (it is not timed) and one
callback added to the default ones (``--trainer.callbacks+=``) that records, per step, the time from
one batch's start to the next (everything the loop does: data, forward, backward, optimizer,
logging, every callback), the loss, and the rows of the batch.

The peer is a plain Transformers Trainer + PEFT script: the same base, the same LoRA settings, the
rows this project trained on in the same batches and order, and its settings read from this
project's run (batch size, precision, learning rate and schedule, warmup, clipping, seed), with
``optim="adamw_torch"``. The base is loaded in float32 and trained under ``bf16=True``: the usual recipe.

Each run is its own process (so its peak RSS is its own); runs alternate, this project then the
peer, for ``--rounds`` rounds; the first ``--warmup`` steps are not timed (they hold this project's
``torch.compile`` compiling; their seconds are reported as warm-up s). Reported: tokens/s
(real tokens, no padding) min / median / max over the rounds, peak RSS, MFU against a peak measured
once for the whole benchmark (a dense GEMM in the training dtype on CPU, the datasheet on GPU), and
both loss curves step by step. The loss check is its own pair of runs that differ in nothing a
correct implementation may change: every dropout off on both sides (LoRA's and the model's own, as
GPT-2's: no random masks) and float32
throughout (``--trainer.precision 32-true`` here, so the peer trains in float32 too): the curves must
agree within ``LOSS_TOLERANCE`` at every step; the benchmark prints PASS or FAIL. (Under bf16
autocast they do not agree that closely: AdamW's first updates are about the sign of each gradient
element, so rounding differences in tiny gradients move the curves apart by up to 0.05 for a few steps.)

    python benchmarks/bench.py                       # CPU, the embedded SmolLM2-135M (make bench)
    python benchmarks/bench.py --device cuda         # make bench-gpu
    python benchmarks/bench.py --variants            # this project's options, each alone
    python benchmarks/bench.py --smoke --model DIR   # seconds: checks that the harness runs
"""

from __future__ import annotations

import argparse
import inspect
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

from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CONFIG = REPO / "configs" / "default.yaml"
TASKS = ("bool_q", "common_gen", "xsum")

LOSS_TOLERANCE = 1e-3
"""Largest per-step difference (nats per completion token) allowed between the two loss curves.

Checked on a pair of runs with every dropout off and float32 throughout: both start from the same model
(LoRA B = 0) on the same batches, so what is left is the order of float32 sums (packed rows against
padded ones, the bounded head's chunks, compiled blocks): 1.3e-5 at most over 13 steps on the bench
workload (2026-12-03). Under bf16 autocast the same pair differed by 0.045 at step 3 (0.051 with this
project's bfloat16 base): AdamW's first updates are about the sign of each gradient element, so the
rounding of tiny gradients moves the curves for a few steps; that is why the check runs in float32.
A wrong learning rate, schedule, loss normalisation, clipping or a missed update moves the curve by
far more than this. The timed rounds keep the configured dropout and precision; their curves are
shown, not checked."""
FIRST_STEP_TOLERANCE = 1e-3
"""The check pair's first step (same batch, same model, before any update) may differ by float32 rounding only
(the timed rounds' may not: a bfloat16 base rounds, and a model's own dropout draws masks even while LoRA B = 0)."""


class BenchClock(Callback):
    """Added to this project's run: per-step start times, losses and batch rows, written at the end."""

    def __init__(self, out: str, no_dropout: bool = False):
        self.out, self.no_dropout = out, no_dropout
        self.starts: list[float] = []
        self.losses: list[float] = []
        self.batches: list[dict] = []
        self.init_checksum: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.init_checksum = lora_checksum(pl_module.model)
        if self.no_dropout:  # before the first step, so before the compiled blocks trace
            without_dropout(pl_module.model)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync(pl_module.device.type)
        self.starts.append(time.perf_counter())
        self.batches.append(batch)  # kept as they are (no copy in the timed loop), read at the end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module) -> None:
        from lora_lightning.model.flops import batch_flops

        sync(pl_module.device.type)
        self.batches = [{k: v.cpu() for k, v in b.items() if hasattr(v, "cpu")} for b in self.batches]
        hp = pl_module.hparams
        peft_config = getattr(pl_module.model, "peft_config", {}).get("default")  # None: full fine-tuning
        record = {
            "starts": self.starts,
            "losses": self.losses,
            "rows": [rows_of(b) for b in self.batches],
            "tokens": [float(b["attention_mask"].sum()) for b in self.batches],
            "padded_tokens": [b["input_ids"].numel() for b in self.batches],
            "packed": any("segments" in b for b in self.batches),
            "flops": [batch_flops(pl_module.model, b, hp.completion_only_head) for b in self.batches],
            "init_checksum": self.init_checksum,
            "base_path": pl_module.base_model_path,
            "pad_token_id": pl_module.tokenizer.pad_token_id,
            "precision": str(trainer.precision),
            "max_steps": trainer.max_steps,
            "gradient_clip_val": trainer.gradient_clip_val,
            "seed": int(os.environ.get("PL_GLOBAL_SEED", 0)),
            "lr": hp.learning_rate,
            "weight_decay": hp.weight_decay,
            "warmup_steps": int(round(hp.warmup_ratio * trainer.estimated_stepping_batches)),
            "lr_schedule": hp.lr_schedule,
            "lora": None
            if peft_config is None
            else {
                "r": peft_config.r,
                "lora_alpha": peft_config.lora_alpha,
                "lora_dropout": peft_config.lora_dropout,
                "target_modules": sorted(peft_config.target_modules),
                "fan_in_fan_out": peft_config.fan_in_fan_out,
            },
            "base_dtype": str(next(p.dtype for p in pl_module.model.parameters())),
            "base_bytes": base_bytes(pl_module.model),
            "quantization": hp.get("quantization"),
            "no_dropout": self.no_dropout,
        }
        Path(self.out).write_text(json.dumps(record))


def sync(device_type: str) -> None:
    if device_type == "cuda":
        import torch

        torch.cuda.synchronize()


def rows_of(batch: dict) -> list[dict]:
    """The examples of a batch, unpadded, in the batch's order (a packed batch unpacked by its ``segments``)."""
    if "segments" in batch:
        segments = batch["segments"]
        return [
            {"input_ids": batch["input_ids"][segments == i].tolist(), "labels": batch["labels"][segments == i].tolist()}
            for i in range(int(segments.max()) + 1)
        ]
    mask = batch["attention_mask"].bool()
    return [
        {"input_ids": ids[m].tolist(), "labels": labels[m].tolist()}
        for ids, labels, m in zip(batch["input_ids"], batch["labels"], mask)
    ]


def base_bytes(model) -> int:
    """Bytes of the frozen base's weights (parameters and buffers; a quantized weight's scales too)."""
    from lora_lightning.model.quantization import param_bytes, tensor_bytes

    frozen = sum(param_bytes(p) for p in model.parameters() if not p.requires_grad)
    return frozen + sum(tensor_bytes(b) for b in model.buffers())


def without_dropout(model) -> None:
    """Every dropout of ``model`` off: LoRA's and the model's own (GPT-2's attention, residual and
    embedding dropout; an ``attention_dropout`` rate). For the loss check: any random mask left makes
    the two sides differ from the first step."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def lora_checksum(model) -> float:
    """Sum of |LoRA weights| at the start: equal on both sides means the same initial adapter."""
    return float(sum(p.detach().double().abs().sum() for n, p in model.named_parameters() if "lora_" in n))


# -- workers (one per process) -------------------------------------------------------------------


def data_files(data_dir: Path) -> dict[str, str] | None:
    files = {t: str(data_dir / f"{t}.jsonl") for t in TASKS}
    return files if all(Path(f).is_file() for f in files.values()) else None


def run_ours(args) -> dict:
    """``lora-lightning fit`` with the default config, through the CLI's entry point, in this process."""
    from lora_lightning.cli import main as cli_main

    if args.old_head:  # the head through autograd, every chunk's logits kept for backward (the previous path)
        from lora_lightning.model import fused_head, loss

        loss.chunked_token_losses = fused_head.plain_chunked_losses
    if args.torch_dropout:  # compiled blocks draw dropout masks with inductor's RNG (the previous path)
        from lora_lightning.model import compiling

        compiling.use_counter_dropout = lambda block: 0
        compiling.COMPILE_OPTIONS = {}
    clock = Path(args.out).with_suffix(".clock.json")
    argv = [
        "fit",
        "--config",
        str(CONFIG),
        "--model.model_name",
        args.model,
        "--data.data_files",
        json.dumps(data_files(Path(args.data_dir))),
        "--data.cache_dir",
        str(Path(args.work) / "data_cache"),
        "--trainer.default_root_dir",
        str(Path(args.out).with_suffix("")),
        "--trainer.accelerator",
        args.device,
        "--trainer.max_epochs",
        "-1",
        "--trainer.max_steps",
        str(args.warmup + args.steps + 1),  # the last step only closes the last timed one
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks+="
        + json.dumps(
            {"class_path": "bench.BenchClock", "init_args": {"out": str(clock), "no_dropout": args.no_dropout}}
        ),
        *(["--data.batch_size", str(args.batch_size)] if args.batch_size else []),
        *(["--data.max_length", str(args.max_length)] if args.max_length else []),
        *json.loads(args.overrides),
    ]
    cli_main(argv)
    return json.loads(clock.read_text())


def run_theirs(args) -> dict:
    """Transformers Trainer + PEFT on the batches this project trained on, with its settings."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    spec = json.loads(Path(args.spec).read_text())
    starts: list[float] = []
    losses: list[float] = []

    class Ordered(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(self.train_dataset)  # the rows in the order they were batched

    class Clock(TrainerCallback):
        def on_train_begin(self, a, state, control, model=None, **kw):
            self.checksum = lora_checksum(model)

        def on_step_begin(self, a, state, control, **kw):
            sync(args.device)
            starts.append(time.perf_counter())

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    tokenizer = AutoTokenizer.from_pretrained(spec["base_path"])
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(spec["pad_token_id"])
    tokenizer.padding_side = "right"
    set_seed(spec["seed"])  # as seed_everything before the model is built: the same LoRA initialisation
    model = AutoModelForCausalLM.from_pretrained(spec["base_path"], dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, bias="none", **spec["lora"]))
    if spec.get("no_dropout"):  # the loss check: as this project's run had it
        without_dropout(model)
    batch_size = len(spec["rows"][0])
    rows = [row for batch in spec["rows"] for row in batch]
    assert all(len(b) == batch_size for b in spec["rows"][: spec["max_steps"]]), "batches of unequal size"
    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out,
            optim="adamw_torch",
            per_device_train_batch_size=batch_size,
            max_steps=spec["max_steps"],
            learning_rate=spec["lr"],
            lr_scheduler_type=spec["lr_schedule"],
            warmup_steps=spec["warmup_steps"],
            weight_decay=spec["weight_decay"],
            max_grad_norm=spec["gradient_clip_val"] or 0.0,
            bf16=spec["precision"].startswith("bf16"),
            fp16=spec["precision"].startswith("16"),
            use_cpu=args.device == "cpu",
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            remove_unused_columns=False,
            seed=spec["seed"],
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        Ordered(model=model, args=training, train_dataset=rows, data_collator=collator, callbacks=[clock]).train()
    from lora_lightning.model.flops import batch_flops

    batches = [collator(b) for b in spec["rows"]]
    return {
        "starts": starts,
        "losses": losses,
        "tokens": [float(b["attention_mask"].sum()) for b in batches],
        "flops": [batch_flops(model, b, completion_only_head=False) for b in batches],
        "init_checksum": clock.checksum,
        "base_dtype": "torch.float32",
    }


def worker(args) -> None:
    record = run_ours(args) if args.worker == "ours" else run_theirs(args)
    import torch

    first, last = args.warmup, args.warmup + args.steps
    record["seconds"] = record["starts"][last] - record["starts"][first]
    record["warmup_seconds"] = record["starts"][first] - record["starts"][0]  # torch.compile compiles in here
    record["timed_tokens"] = sum(record["tokens"][first:last])
    record["timed_flops"] = sum(record["flops"][first:last])
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    Path(args.out).write_text(json.dumps(record))


# -- the parent: rounds, the peak, the tables ------------------------------------------------------


PREVIOUS_PATHS = ("--old-head", "--torch-dropout")  # worker flags that put back a replaced code path
WORKER_FLAGS = (*PREVIOUS_PATHS, "--no-dropout")  # flags of the worker itself, not of the CLI


def run_worker(args, system: str, out: Path, spec: Path | None = None, flags: list[str] | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", system, "--out", str(out), "--work", str(out.parent)]
    cmd += ["--model", args.model, "--device", args.device, "--data-dir", str(args.data_dir)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    cmd += ["--max-length", str(args.max_length)] if args.max_length else []
    cmd += ["--spec", str(spec)] if spec else []
    cmd += [f"--overrides={json.dumps([f for f in flags or [] if f not in WORKER_FLAGS])}"]
    cmd += [f for f in flags or [] if f in WORKER_FLAGS]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{system} {' '.join(flags or [])} run failed:\n{done.stderr[-4000:]}")
    result = json.loads(out.read_text())
    result["tokens_per_s"] = result["timed_tokens"] / result["seconds"]
    return result


class Peaks:
    """The device's peak FLOP/s per dtype, measured once for the whole benchmark (not per process)."""

    def __init__(self, device: str, smoke: bool = False):
        self.device, self.smoke, self.cache = device, smoke, {}

    def __call__(self, precision: str) -> float | None:
        import torch

        from lora_lightning.model.flops import cpu_peak_flops, measured_peak_flops, peak_flops

        dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision.split("-")[0], torch.float32)
        if dtype not in self.cache:
            if self.device == "cpu" and self.smoke:
                self.cache[dtype] = measured_peak_flops(dtype, 1024, 0.2)
            elif self.device == "cpu":  # the peak `fit` divides by too: measured once per machine, cached
                self.cache[dtype], where = cpu_peak_flops(dtype)
                print(f"Peak for MFU ({dtype}): {self.cache[dtype] / 1e12:.2f} TFLOP/s, {where}", flush=True)
            else:
                self.cache[dtype] = peak_flops(torch.device(self.device), dtype)
        return self.cache[dtype]


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def describe_workload(record: dict, args) -> str:
    timed = slice(args.warmup, args.warmup + args.steps)
    rows = [r for b in record["rows"][timed] for r in b]
    lengths = sorted(len(r["input_ids"]) for r in rows)
    completion = sum(sum(1 for t in r["labels"][1:] if t != -100) for r in rows)
    unpacked = sum(len(b) * max(len(r["input_ids"]) for r in b) for b in record["rows"][timed])
    padded = sum(record["padded_tokens"][timed])
    return (
        f"{len(rows)} timed examples of {', '.join(TASKS)} from {args.data_dir}: length min {lengths[0]}, median "
        f"{lengths[len(lengths) // 2]}, max {lengths[-1]} tokens; {completion} completion tokens "
        f"({100 * completion / sum(lengths):.0f}% of {sum(lengths)} real tokens); padding: "
        f"{100 * (1 - sum(lengths) / unpacked):.0f}% of batches padded to their longest example (the peer), "
        f"{100 * (1 - sum(lengths) / padded):.0f}% of this project's batches "
        f"({'packed' if record['packed'] else 'not packed'})"
    )


def curve_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def loss_check_pair(args, work: Path, first_round: tuple[dict, dict]) -> tuple[dict, dict]:
    """The loss check's runs: this project and the peer with every dropout off and float32 throughout
    (the peer takes both from this project's run), on the timed rounds' batches (the same seed), not
    timed. When the timed rounds already ran that way, their first pair is the check."""
    if first_round[0].get("no_dropout") and first_round[0]["precision"] == "32-true":
        return first_round
    flags = ["--model.lora_dropout", "0.0", "--trainer.precision", "32-true", "--no-dropout"]
    mine = run_worker(args, "ours", work / "check-ours.json", flags=flags)
    print(f"loss check, every dropout off, float32: ours {mine['tokens_per_s']:.1f} tokens/s", flush=True)
    return mine, run_worker(args, "theirs", work / "check-theirs.json", work / "check-ours.json")


def compare(args) -> str:
    results: dict[str, list[dict]] = {"ours": [], "theirs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for system in ("ours", "theirs"):  # alternate, so drift hits both alike
                out = Path(tmp) / f"{system}-{round_}.json"
                spec = Path(tmp) / f"ours-{round_}.json" if system == "theirs" else None
                results[system].append(run_worker(args, system, out, spec))
                print(f"round {round_ + 1} {system}: {results[system][-1]['tokens_per_s']:.1f} tokens/s", flush=True)
        check = loss_check_pair(args, Path(tmp), (results["ours"][0], results["theirs"][0]))
    peaks = Peaks(args.device, args.smoke)
    ours0 = results["ours"][0]
    precision = ours0["precision"]
    peak = peaks(precision)
    pairs = list(zip(results["ours"], results["theirs"])) + [check]
    same_batches = all(o["rows"] == ours0["rows"] for o, _ in pairs)
    gaps = [curve_gap(o["losses"], t["losses"]) for o, t in pairs]  # the timed rounds', then the check pair's
    first_gap = abs(check[0]["losses"][0] - check[1]["losses"][0])  # the timed rounds' models round and drop
    complete = all(len(r["losses"]) == ours0["max_steps"] for pair in pairs for r in pair)
    checksums = [r["init_checksum"] for pair in pairs for r in pair]
    same_init = max(checksums) - min(checksums) <= 1e-4 * max(checksums)  # LoRA A drawn in float32, rounded to bf16
    passed = (
        complete and same_batches and same_init and first_gap <= FIRST_STEP_TOLERANCE and gaps[-1] <= LOSS_TOLERANCE
    )
    gpu = args.device == "cuda"
    lora = ours0["lora"]
    dropout = lora["lora_dropout"]
    lines = [
        f"Benchmark {date.today()} on {platform.machine()} ({os.cpu_count()} CPU cores"
        + (f", {__import__('torch').cuda.get_device_name()}" if gpu else "")
        + f"), device {args.device}",
        f"workload: {args.model}, `lora-lightning fit --config configs/default.yaml` (default callbacks) vs "
        f"Transformers Trainer + PEFT (optim adamw_torch, float32 base); LoRA r={lora['r']} alpha={lora['lora_alpha']} "
        f"dropout={lora['lora_dropout']} on {','.join(lora['target_modules'])}; batch {len(ours0['rows'][0])}, "
        f"{precision}, lr {ours0['lr']} {ours0['lr_schedule']} with {ours0['warmup_steps']} warmup step(s) over "
        f"{ours0['max_steps']}, clip {ours0['gradient_clip_val']}; this project's frozen base {ours0['base_dtype']}",
        describe_workload(ours0, args),
        f"{args.steps} timed steps after {args.warmup} warm-up, {args.rounds} alternating rounds; MFU against "
        + (f"{peak / 1e12:.2f} TFLOP/s " if peak else "no known peak ")
        + ("(a dense GEMM measured once for this benchmark)" if args.device == "cpu" else "(datasheet)"),
        "",
        "| system | tokens/s min / median / max | peak RSS (MB) | "
        + ("peak GPU (MB) | " if gpu else "")
        + "MFU (median) | warm-up s (median) | loss, first / last timed step |",
        "| --- | --- | --- | " + ("--- | " if gpu else "") + "--- | --- | --- |",
    ]
    for system, name in (("ours", "lora_lightning"), ("theirs", "Transformers Trainer + PEFT")):
        rs = results[system]
        mfu = statistics.median(r["timed_flops"] / r["seconds"] / peak for r in rs) if peak else None
        losses = rs[0]["losses"][args.warmup : args.warmup + args.steps]
        lines.append(
            f"| {name} | {spread([r['tokens_per_s'] for r in rs])} | "
            f"{statistics.median(r['peak_rss_mb'] for r in rs):.0f} | "
            + (f"{statistics.median(r['peak_gpu_mb'] for r in rs):.0f} | " if gpu else "")
            + f"{'-' if mfu is None else f'{100 * mfu:.1f}%'} | "
            + f"{statistics.median(r['warmup_seconds'] for r in rs):.1f} | {losses[0]:.4f} / {losses[-1]:.4f} |"
        )
    ratio = statistics.median(r["tokens_per_s"] for r in results["ours"]) / statistics.median(
        r["tokens_per_s"] for r in results["theirs"]
    )
    lines += [
        "",
        f"speed ratio (median tokens/s, lora_lightning / Trainer + PEFT): **{ratio:.2f}x**",
        "",
        f"Loss per step (nats per completion token): round 1 (LoRA dropout {dropout}) and the check pair "
        "(every dropout off and float32 throughout on both sides)",
        "",
        "| step | lora_lightning | Trainer + PEFT | difference | check: lora_lightning | check: Trainer + PEFT | "
        "check: difference |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    curves = zip(results["ours"][0]["losses"], results["theirs"][0]["losses"], check[0]["losses"], check[1]["losses"])
    for step, (a, b, c, d) in enumerate(curves, 1):
        mark = " (warm-up)" if step <= args.warmup else (" (untimed, last)" if step > args.warmup + args.steps else "")
        lines.append(f"| {step}{mark} | {a:.4f} | {b:.4f} | {a - b:+.4f} | {c:.4f} | {d:.4f} | {c - d:+.4f} |")
    lines += [
        "",
        f"same batches in every round: {'yes' if same_batches else 'NO'}; same initial adapter on both sides: "
        f"{'yes (up to the rounding of LoRA A to the base dtype by peft)' if same_init else 'NO'}",
        f"largest per-step difference of the timed rounds (LoRA dropout {dropout}, each side its own masks; "
        f"shown, not checked): {', '.join(f'{g:.4f}' for g in gaps[:-1])}",
        f"loss check (every dropout off and float32 throughout on both sides): first step {first_gap:.4f} "
        f"(tolerance {FIRST_STEP_TOLERANCE}), largest per-step difference {gaps[-1]:.4f} (tolerance {LOSS_TOLERANCE}): "
        f"**{'PASS' if passed else 'FAIL'}**",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    return text


def variant_options() -> list[tuple[str, list[str]]]:
    """Each option alone against the default; packing and compiling when this version has them."""
    from lora_lightning import LoRAModule
    from lora_lightning.data import FlanDataModule

    rows = [
        ("default: bf16-mixed, bf16 base, bounded completion-only head, compiled blocks", []),
        ("fp32 (32-true, so a float32 base)", ["--trainer.precision", "32-true"]),
        ("float32 base under bf16-mixed", ["--model.base_dtype", "float32"]),
        ("old head (every chunk's logits kept for backward)", ["--old-head"]),
        ("dropout masks from inductor's RNG (before counter_dropout)", ["--torch-dropout"]),
        ("LoRA dropout 0", ["--model.lora_dropout", "0.0"]),
        ("LoRA on attention only (target_modules auto: q,v on Llama)", ["--model.target_modules", "auto"]),
        (
            "full fine-tuning (model.lora false, lr 1e-4 as make quality picked it)",
            ["--model.lora", "false", "--model.learning_rate", "1e-4"],
        ),
        ("full-logits head", ["--model.completion_only_head", "false"]),
        ("gradient checkpointing", ["--model.gradient_checkpointing", "true"]),
    ]
    if "compile_memory_budget" in inspect.signature(LoRAModule.__init__).parameters:
        rows.append(
            (
                "compiled blocks keep what is fastest (model.compile_memory_budget 1)",
                ["--model.compile_memory_budget", "1.0"],
            )
        )
    if "attn_implementation" in inspect.signature(LoRAModule.__init__).parameters:
        rows.append(
            (
                "sdpa attention, transformers' default (model.attn_implementation sdpa)",
                ["--model.attn_implementation", "sdpa"],
            )
        )
    packing = inspect.signature(FlanDataModule.__init__).parameters.get("packing")
    if packing is not None:
        flip = "false" if packing.default else "true"
        rows.append((f"packing {'off' if packing.default else 'on'}", ["--data.packing", flip]))
    if "compile" in inspect.signature(LoRAModule.__init__).parameters:
        rows.append(("eager (model.compile false)", ["--model.compile", "false"]))
    return rows


def variants(args) -> str:
    """This project's options, one at a time against the default, alternating over ``--rounds`` rounds."""
    every_option = variant_options()
    options = every_option[:1] + [o for o in every_option[1:] if any(word in o[0] for word in args.only or [""])]
    results: dict[str, list[dict]] = {name: [] for name, _ in options}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for i, (name, flags) in enumerate(options):
                out = Path(tmp) / f"v{i}-{round_}.json"
                results[name].append(run_worker(args, "ours", out, flags=flags))
                print(f"round {round_ + 1} {name}: {results[name][-1]['tokens_per_s']:.1f} tokens/s", flush=True)
    peaks = Peaks(args.device, args.smoke)
    default = results[options[0][0]][0]
    lines = [
        f"Options of lora_lightning, {date.today()}, {platform.machine()} ({os.cpu_count()} CPU cores), device "
        f"{args.device}; the workload of the comparison ({args.model}), {args.steps} timed steps after "
        f"{args.warmup} warm-up, {args.rounds} rounds alternating over the options; MFU against a peak measured once "
        "per dtype",
        describe_workload(default, args),
        "",
        "| option | tokens/s min / median / max | peak RSS (MB) | MFU (median) | warm-up s | mean loss, timed steps | "
        "largest per-step loss difference from the default |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, _ in options:
        rs = results[name]
        peak = peaks(rs[0]["precision"])
        mfu = statistics.median(r["timed_flops"] / r["seconds"] / peak for r in rs) if peak else None
        timed = rs[0]["losses"][args.warmup : args.warmup + args.steps]
        gap = (
            f"{curve_gap(rs[0]['losses'], default['losses']):.4f}"
            if rs[0]["rows"] == default["rows"]
            else "other batches"
        )
        lines.append(
            f"| {name} | {spread([r['tokens_per_s'] for r in rs])} | "
            f"{statistics.median(r['peak_rss_mb'] for r in rs):.0f} | "
            f"{'-' if mfu is None else f'{100 * mfu:.1f}%'} | "
            f"{statistics.median(r['warmup_seconds'] for r in rs):.1f} | {statistics.mean(timed):.4f} | {gap} |"
        )
    if not any(name.startswith("packing") for name, _ in every_option):
        lines.append("\n(no packing row: this version has no data.packing)")
    text = "\n".join(lines) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).with_name("variants.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data-dir", default=str(SHARED), help="folder with bool_q/common_gen/xsum .jsonl rows")
    parser.add_argument("--batch-size", type=int, help="default: the config's data.batch_size")
    parser.add_argument("--max-length", type=int, help="default: the config's data.max_length")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="1 warm-up + 1 timed step, 1 round: the harness runs")
    parser.add_argument("--output", default=str(REPO / "checkpoints" / "bench" / "bench.md"))
    parser.add_argument("--variants", action="store_true", help="this project's options, each alone")
    parser.add_argument(
        "--only", nargs="+", metavar="TEXT", help="with --variants: the default and the options whose name holds TEXT"
    )
    parser.add_argument("--worker", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--old-head", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--torch-dropout", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-dropout", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if data_files(Path(args.data_dir)) is None:
        print(f"bench: skipped: the real rows ({', '.join(f'{t}.jsonl' for t in TASKS)}) are not in {args.data_dir}")
        return
    if args.smoke:
        args.steps, args.warmup, args.rounds = 1, 1, 1
    print(variants(args) if args.variants else compare(args))


if __name__ == "__main__":
    main()
