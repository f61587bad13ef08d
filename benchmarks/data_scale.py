"""Data at scale (``make bench-data``): one bool_q file of 10,000 / 100,000 / 1,000,000 rows, prepared
and trained one step on, each size in fresh processes.

The rows are the real BoolQ rows of ``../shared/data/bool_q.jsonl`` (300) repeated, each copy's
question given a unique suffix, written in the Hub layout and passed as ``--data.data_files
{bool_q: FILE}`` (a train file only: selection and evaluation rows are carved out of it). Each size
runs ``lora-lightning fit --config configs/default.yaml`` through the CLI's own entry point with
``--trainer.max_steps 1``, ``--data.batch_size 1``, no validation, ``--model.compile false`` and the
embedded default model (SmolLM2-135M-Instruct, whose tokenizer tokenizes, in its chat format),
twice: cold (an empty data cache and an empty ``datasets`` cache) and cached (the same caches
again).

Reported per size: rows trained, selection and evaluation rows; the data preparation's seconds
(``FlanDataModule.load_or_build``: read, split, tokenize, cache; or load the cache) cold and cached,
and examples tokenized per second of it; the process's RSS before the preparation and its peak
during it (sampled every 50 ms); ``VmHWM`` (the peak RSS of the whole run, training step included,
from /proc/self/status at exit) and the peaks of its two parts, ``RssAnon`` (the process's own
memory) and ``RssFile`` (pages of mapped files it has read: libraries, the model, Arrow files; the
kernel can drop them under pressure).

    python benchmarks/data_scale.py                         # 10k, 100k, 1M rows (make bench-data)
    python benchmarks/data_scale.py --sizes 600 --smoke --model DIR   # seconds: the harness runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "default.yaml"
SIZES = (10_000, 100_000, 1_000_000)


def shared_rows() -> Path:
    for folder in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if (folder / "bool_q.jsonl").is_file():
            return folder / "bool_q.jsonl"
    sys.exit("data_scale: needs ../shared/data/bool_q.jsonl (real BoolQ rows), not found")


def write_rows(path: Path, count: int) -> None:
    """``count`` rows: the real ones in turn, each question suffixed with its copy number."""
    rows = [json.loads(line) for line in shared_rows().read_text().splitlines() if line.strip()]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            row = rows[i % len(rows)]
            f.write(json.dumps({**row, "question": f"{row['question']} (copy {i // len(rows)})"}) + "\n")


def status(field: str) -> int:
    """A /proc/self/status memory field, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(args: argparse.Namespace) -> None:
    """One fit of one step; prints one JSON line of what it measured."""
    from lora_lightning.cli import build_cli
    from lora_lightning.data.datamodule import FlanDataModule

    peaks = {"RssAnon": 0, "RssFile": 0, "prep": 0}
    done, preparing = threading.Event(), threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            for field in ("RssAnon", "RssFile"):
                peaks[field] = max(peaks[field], status(field))
            if preparing.is_set():
                peaks["prep"] = max(peaks["prep"], status("VmRSS"))

    threading.Thread(target=sample, daemon=True).start()
    measured: dict = {}
    load_or_build = FlanDataModule.load_or_build

    def timed(self: FlanDataModule) -> None:
        measured["rss_before_prep"] = status("VmRSS")
        preparing.set()
        started = time.perf_counter()
        load_or_build(self)
        measured["prep_s"] = time.perf_counter() - started
        preparing.clear()
        peaks["prep"] = max(peaks["prep"], status("VmRSS"))
        measured["stats"] = self.stats["bool_q"]

    FlanDataModule.load_or_build = timed  # type: ignore[method-assign]
    started = time.perf_counter()
    build_cli(
        [
            "fit",
            *("--config", str(CONFIG)),
            *("--data.tasks", "[bool_q]"),
            *("--data.data_files", f"{{bool_q: {args.data}}}"),
            *("--data.cache_dir", args.cache),
            *("--trainer.default_root_dir", args.run),
            *("--trainer.max_steps", "1"),
            *("--trainer.num_sanity_val_steps", "0"),
            *("--trainer.limit_val_batches", "0"),
            *("--model.compile", "false"),
            *("--samples.samples_per_task", "0"),
            *("--data.batch_size", "1"),  # the step only shows training starts; its compute is not the subject
            *(("--model.model_name", args.model) if args.model else ()),
        ]
    )
    done.set()
    stats = measured["stats"]
    print(
        "RESULT "
        + json.dumps(
            {
                "prep_s": measured["prep_s"],
                "run_s": time.perf_counter() - started,
                "trained": stats["train"],
                "available": stats["available"],
                "selection": stats["validation"],
                "evaluation": stats["evaluation_rows"],
                "tokenized": stats["train"] + stats["validation"],
                "vm_hwm": status("VmHWM"),
                "rss_before_prep": measured["rss_before_prep"],
                "prep_peak": peaks["prep"],
                "rss_anon_peak": peaks["RssAnon"],
                "rss_file_peak": peaks["RssFile"],
            }
        ),
        flush=True,
    )


def run_child(data: Path, cache: Path, hf_cache: Path, run: Path, model: str | None, log: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TORCH_COMPILE_DISABLE": "1", "HF_DATASETS_CACHE": str(hf_cache)}
    env["PYTHONWARNINGS"] = "ignore"
    command = [sys.executable, __file__, "--child", "--data", str(data), "--cache", str(cache), "--run", str(run)]
    done = subprocess.run(
        command + (["--model", model] if model else []), cwd=REPO, env=env, capture_output=True, text=True
    )
    log.write_text(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"data_scale: the run failed (exit {done.returncode}); its output is in {log}")
    return json.loads(lines[-1][len("RESULT ") :])


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if "model name" in line]
    cpu = names[0] if names else platform.processor()
    memory = status_total()
    return f"{os.cpu_count()} cores ({cpu}), {memory / 2**30:.0f} GiB memory, Python {platform.python_version()}"


def status_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--model", help="model (and tokenizer) to run; default: the config's embedded SmolLM2")
    parser.add_argument("--workdir", help="where the data files and caches go (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="only check that the harness runs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"Data at scale, {date.today().isoformat()}: {machine()}")
    print(
        f"bool_q rows of {shared_rows()} repeated with unique suffixes; fit --config configs/default.yaml, "
        f"1 step, compile off, model {args.model or 'smollm2-135m-instruct (embedded default)'}"
    )
    header = (
        "| rows | trained | selection | evaluation | prep cold s | examples/s | prep cached s "
        "| RSS before prep MB | peak RSS in prep cold MB | peak RSS run cold MB | peak RSS run cached MB "
        "| RssAnon peak cold MB | RssFile peak cold MB |"
    )
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    results = []
    for size in args.sizes:
        folder = work / str(size)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        data = folder / "bool_q.jsonl"
        write_rows(data, size)
        runs = [
            run_child(data, folder / "cache", folder / "hf", folder / f"run-{kind}", args.model, folder / f"{kind}.log")
            for kind in ("cold", "cached")
        ]
        cold, cached = runs
        mb = 2**20
        results.append((size, cold, cached))
        print(
            f"| {size:,} | {cold['trained']:,} | {cold['selection']:,} | {cold['evaluation']:,} "
            f"| {cold['prep_s']:.1f} | {cold['tokenized'] / cold['prep_s']:,.0f} | {cached['prep_s']:.1f} "
            f"| {cold['rss_before_prep'] / mb:,.0f} | {cold['prep_peak'] / mb:,.0f} "
            f"| {cold['vm_hwm'] / mb:,.0f} | {cached['vm_hwm'] / mb:,.0f} "
            f"| {cold['rss_anon_peak'] / mb:,.0f} | {cold['rss_file_peak'] / mb:,.0f} |",
            flush=True,
        )
        if not args.workdir:
            shutil.rmtree(folder, ignore_errors=True)
    small, large = results[0], results[-1]
    growth = (large[1]["vm_hwm"] - small[1]["vm_hwm"]) / 2**20
    prep = (large[1]["prep_peak"] - small[1]["prep_peak"]) / 2**20
    every = all(c["trained"] == c["available"] == n - c["selection"] - c["evaluation"] for n, c, _ in results)
    print(f"Every row trains but the held-out ones: {'yes' if every else 'NO'}")
    print(
        f"Peak RSS growth {small[0]:,} -> {large[0]:,} rows (cold; goal within 300 MB): whole run {growth:+,.0f} MB, "
        f"data preparation {prep:+,.0f} MB; slowest cached prep {max(c['prep_s'] for _, _, c in results):.1f} s "
        "(goal < 10)"
    )
    if args.smoke:
        print("smoke run: harness OK")


if __name__ == "__main__":
    main()
