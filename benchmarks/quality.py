"""Does LoRA learn as well as full fine-tuning? Real rows, one budget, rows never trained on (``make quality``).

The data: real rows of ``../shared/data`` in their Hub column layout (bool_q, paws: classification;
common_gen, xsum: generation). Each task's rows are split once, seeded, into a training file and a
held-out file (common_gen by concept set, so no held-out concept set is ever trained on). They reach
the project as a user's local files do (``--data.data_files {task: {train: ..., validation: ...}}``),
so the project makes its own splits: the held-out file is the task's validation split, which the
project scores as its evaluation rows, and the selection rows (``val/loss``, the best adapter, the
full-fine-tuning learning rate) are carved by the project from the training rows. Nothing the
results table scores was trained on or chose anything.

Every arm is ``lora-lightning fit`` then ``lora-lightning test`` in a fresh process, with
``configs/default.yaml`` and the same data, epochs, batch size and sequence length: the same
optimizer steps over the same tokens. Only the recipe differs:

* ``base``: the model as shipped (the base column of the LoRA arm's ``test``);
* ``full``: every weight trained (``model.lora false``), its learning rate the best selection loss
  over ``--full-lrs`` (default 1e-4 and 3e-4; each tried rate is listed, only the chosen one is tested);
* ``lora``: the default recipe (``configs/default.yaml`` as it is);
* variants: ``all_linear`` (every linear layer), ``r64`` (rank 64, alpha 128), ``rslora``
  (alpha / sqrt(r) scaling), ``lr10x`` (10x the chosen full-fine-tuning learning rate, as "LoRA
  Without Regret" advises; skipped when that is the default rate), and on request (``--arms``)
  ``all_linear_lr10x``. The base is scored once, with the first LoRA arm (``model.score_base``).

The budget of the default run: one epoch over 150 training rows of bool_q, paws and common_gen and
80 of xsum (the project carves 10% of them for selection: about 60 optimizer steps of 8 rows), two
full-fine-tuning rates, four or five LoRA arms, eager (no ``torch.compile``: it costs a minute a fit
here and changes no number compared); about an hour on 2 CPU cores (66 min measured 2026-12-02 with
other work on the cores part of the time). Held out: bool_q 100, paws 100,
xsum 30 rows and common_gen 15 concept sets (about 60 rows).

It prints one table: every task's metrics per arm (accuracies with a 95% Wilson interval and the
number of rows), then each LoRA arm's share of full fine-tuning's gain over the base per metric,
``(arm - base) / (full - base)``, and its median over the metrics (perplexity is left out: it is the
loss again). A metric full fine-tuning does not improve gets no share (n/a). Results go to
``--out`` (``quality.md`` and ``quality.json``).

    python benchmarks/quality.py                # make quality: the budget below, about an hour on 2 CPU cores
    python benchmarks/quality.py --quick        # minutes: few rows, lora and one full learning rate
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path

from lora_lightning.metrics import lower_is_better_columns

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CONFIG = REPO / "configs" / "default.yaml"

TASKS = ("bool_q", "common_gen", "xsum", "paws")
GROUP_COLUMN = {"common_gen": "concept_set_idx"}  # rows sharing it are one example in evaluation
HELD_OUT = {"bool_q": 100, "paws": 100, "xsum": 30, "common_gen": 15}  # rows (common_gen: concept sets)
QUICK_HELD_OUT = {"bool_q": 20, "paws": 20, "xsum": 6, "common_gen": 5}
TRAIN_CAP = {"bool_q": 150, "paws": 150, "common_gen": 150, "xsum": 80}  # training rows (xsum's are the longest)
QUICK_TRAIN = 24  # training rows per task in --quick
DEFAULT_ARMS = ("lora", "all_linear", "r64", "rslora", "lr10x")

ARMS: dict[str, list[str]] = {
    "lora": [],
    "all_linear": ["--model.target_modules", "all-linear"],
    "r64": ["--model.lora_r", "64", "--model.lora_alpha", "128"],
    "rslora": ["--model.use_rslora", "true"],
    "lr10x": [],  # the learning rate is filled in from the chosen full-fine-tuning rate
    "all_linear_lr10x": ["--model.target_modules", "all-linear"],
}
FULL_LRS = (1e-4, 3e-4)
LOWER_IS_BETTER = set(lower_is_better_columns())  # the metric registry says which
LEFT_OUT_OF_SHARE = {"perplexity", "accuracy_rank_norm"}  # the loss again; accuracy_rank per character
ACCURACIES = {"accuracy_rank", "accuracy_rank_norm", "accuracy_exact"}
MIN_GAIN = 1e-6
"""A metric that full fine-tuning does not improve by at least this has no share."""


# -- arithmetic (tested in tests/test_quality_table.py) -----------------------------------------


def wilson_interval(percent: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval, in percent, of an accuracy of ``percent`` over ``n`` rows."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = percent / 100
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


def gain_share(arm: float, base: float, full: float, lower_is_better: bool = False) -> float | None:
    """``(arm - base) / (full - base)``: 1.0 is full fine-tuning's gain, 0 the base's; None when full
    fine-tuning does not improve the metric (no gain to take a share of). The same formula for
    lower-is-better metrics (both differences are negative when both improve)."""
    if any(math.isnan(v) for v in (arm, base, full)):
        return None
    gain = (base - full) if lower_is_better else (full - base)
    return None if gain < MIN_GAIN else (arm - base) / (full - base)


def shares(results: Mapping[str, Mapping[str, Mapping[str, float]]], arm: str) -> dict[tuple[str, str], float | None]:
    """``{(task, metric): share}`` of ``arm`` for every metric the base, full and the arm all have."""
    out = {}
    for task, metrics in results["base"].items():
        for metric, base in metrics.items():
            if metric in LEFT_OUT_OF_SHARE:
                continue
            try:
                full, value = results["full"][task][metric], results[arm][task][metric]
            except KeyError:
                continue
            out[(task, metric)] = gain_share(value, base, full, metric in LOWER_IS_BETTER)
    return out


def median_share(values: Mapping[tuple[str, str], float | None]) -> float | None:
    defined = [v for v in values.values() if v is not None]
    return statistics.median(defined) if defined else None


def cell(metric: str, value: float | None, n: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if metric in ACCURACIES and n:
        low, high = wilson_interval(value, n)
        return f"{value:.1f} [{low:.1f}, {high:.1f}]"
    return f"{value:.4f}" if metric == "loss" else f"{value:.2f}"


def results_table(
    results: Mapping[str, Mapping[str, Mapping[str, float]]], rows_scored: Mapping[str, int], arms: Sequence[str]
) -> str:
    """The markdown table: one line per task and metric, one column per arm; then the shares."""
    columns = ["base", "full", *[a for a in arms if a in results and a not in ("base", "full")]]
    lines = ["| task | metric | rows | " + " | ".join(columns) + " |", "|" + " --- |" * (3 + len(columns))]
    for task, metrics in results["base"].items():
        for metric in metrics:
            values = [results[c].get(task, {}).get(metric) for c in columns]
            n = rows_scored.get(task)
            lines.append(f"| {task} | {metric} | {n} | " + " | ".join(cell(metric, v, n) for v in values) + " |")
    lora_arms = [c for c in columns if c not in ("base", "full")]
    if "full" not in results or not lora_arms:
        return "\n".join(lines) + "\n"
    per_arm = {arm: shares(results, arm) for arm in lora_arms}
    keys = list(next(iter(per_arm.values())))
    lines += ["", "Share of full fine-tuning's gain over the base, (arm - base) / (full - base):", ""]
    lines += ["| task | metric | " + " | ".join(lora_arms) + " |", "|" + " --- |" * (2 + len(lora_arms))]
    for task, metric in keys:
        values = [per_arm[a].get((task, metric)) for a in lora_arms]
        lines.append(f"| {task} | {metric} | " + " | ".join(percent(v) for v in values) + " |")
    medians = [percent(median_share(per_arm[a])) for a in lora_arms]
    lines.append("| **median** | | " + " | ".join(f"**{m}**" for m in medians) + " |")
    return "\n".join(lines) + "\n"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


# -- data ----------------------------------------------------------------------------------------


def split_rows(task: str, rows: list[dict], held_out: int, seed: int, train_cap: int | None = None):
    """(train, held-out) rows of one task: seeded, by group where the task has groups (``held_out``
    then counts groups), so no held-out group shares a row with training."""
    column = GROUP_COLUMN.get(task)
    keys = list(dict.fromkeys(str(r[column]) if column else str(i) for i, r in enumerate(rows)))
    random.Random(f"{seed}:{task}").shuffle(keys)
    held = set(keys[:held_out])
    key_of = [str(r[column]) if column else str(i) for i, r in enumerate(rows)]
    train = [r for r, k in zip(rows, key_of) if k not in held]
    test = [r for r, k in zip(rows, key_of) if k in held]
    return (train[:train_cap] if train_cap else train), test


def write_data(out: Path, quick: bool, seed: int) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
    """Writes each task's train.jsonl and validation.jsonl under ``out``; returns data_files and the
    training rows per task."""
    files, trained = {}, {}
    for task in TASKS:
        source = SHARED / f"{task}.jsonl"
        if not source.is_file():
            sys.exit(f"quality.py needs {source} (real rows of ../shared/data); it is not there")
        rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
        held = (QUICK_HELD_OUT if quick else HELD_OUT)[task]
        train, test = split_rows(task, rows, held, seed, QUICK_TRAIN if quick else TRAIN_CAP.get(task))
        folder = out / "data" / task
        folder.mkdir(parents=True, exist_ok=True)
        for name, part in (("train", train), ("validation", test)):
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        files[task] = {"train": str(folder / "train.jsonl"), "validation": str(folder / "validation.jsonl")}
        trained[task] = len(train)
    return files, trained


# -- runs ------------------------------------------------------------------------------------------


def cli(*args: str, log: Path) -> float:
    """Runs ``lora-lightning ARGS`` as a user does, output to ``log``; returns the wall seconds."""
    start = time.monotonic()
    with open(log, "w") as f:
        done = subprocess.run(
            [sys.executable, "-m", "lora_lightning", *args], stdout=f, stderr=subprocess.STDOUT, cwd=REPO
        )
    if done.returncode != 0:
        sys.exit(f"lora-lightning {args[0]} failed (exit {done.returncode}); see {log}")
    return time.monotonic() - start


def common_args(data_files: Mapping, args: argparse.Namespace, root: Path) -> list[str]:
    return [
        "--config",
        str(CONFIG),
        "--data.data_files",
        json.dumps(data_files),
        "--data.tasks",
        json.dumps(list(TASKS)),
        "--data.eval_examples_per_task",
        "1000",
        "--trainer.max_epochs",
        str(args.epochs),
        "--trainer.default_root_dir",
        str(root),
        "--model.compile",  # compiling costs a minute a fit on 2 cores and changes no number that is compared
        "false",
        "--last_checkpoint.every_n_train_steps",  # a crash-safety copy of 1.6 GB (full) every 10 steps: not needed here
        "0",
    ]


def default_learning_rate() -> float:
    for line in CONFIG.read_text().splitlines():
        if line.strip().startswith("learning_rate:"):
            return float(line.split(":", 1)[1].split("#")[0])
    raise SystemExit(f"no model.learning_rate in {CONFIG}")


def best_val_loss(folder: Path) -> float:
    return float(json.loads((folder / "training_history.json").read_text())["best_val_loss"])


def read_results(csv_path: Path, column: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            out.setdefault(row["task"], {})[row["metric"]] = float(row[column])
    return out


def run_arm(name: str, extra: list[str], base_args: list[str], root: Path, full: bool) -> dict:
    """fit then test one arm; its metrics (and the base's, for a LoRA arm) and timings."""
    root.mkdir(parents=True, exist_ok=True)
    fit_s = cli("fit", *base_args, *extra, log=root / "fit.log")
    folder = root / ("model" if full else "adapter")
    record = {"arm": name, "args": extra, "fit_s": round(fit_s, 1), "best_val_loss": best_val_loss(folder)}
    return record


def test_arm(record: dict, base_args: list[str], root: Path, full: bool, score_base: bool = True) -> None:
    if full:
        test_args = ["--model.lora", "false", "--model.model_name", str(root / "model")]
    else:
        test_args = ["--model.adapter", str(root / "adapter"), "--model.score_base", str(score_base).lower()]
    record["test_s"] = round(cli("test", *base_args, *test_args, log=root / "test.log"), 1)
    results = root / "eval_results.csv"
    record["metrics"] = read_results(results, "model" if full else "adapter")
    if not full and score_base:
        record["base_metrics"] = read_results(results, "base")


def rows_scored(test_log: Path) -> dict[str, int]:
    """Rows per task from the results table's title line (``bool_q 100 (validation); ...``)."""
    for line in test_log.read_text().splitlines():
        if "Evaluation rows never used" in line:
            parts = line.split("):", 1)[1].split(";")
            return {p.split()[0]: int(p.split()[1]) for p in parts if p.strip()}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="minutes: few rows, lora and one full rate")
    parser.add_argument("--arms", nargs="*", default=None, help=f"LoRA arms among {', '.join(ARMS)}")
    parser.add_argument("--full-lrs", nargs="*", type=float, default=None, help="full fine-tuning rates to try")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(REPO / "checkpoints" / "quality"))
    args = parser.parse_args()
    arms = args.arms or (["lora"] if args.quick else list(DEFAULT_ARMS))
    full_lrs = args.full_lrs or ([1e-4] if args.quick else list(FULL_LRS))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_files, trained = write_data(out, args.quick, args.seed)
    started = time.monotonic()

    def arm_args(root: Path) -> list[str]:
        return common_args(data_files, args, root)

    records, fulls = {}, []
    for lr in full_lrs:  # the selection loss picks the rate; the evaluation rows are not looked at
        root = out / f"full_lr{lr:g}"
        print(f"full fine-tuning, learning rate {lr:g} ...", flush=True)
        rec = run_arm(
            f"full lr {lr:g}",
            ["--model.lora", "false", "--model.learning_rate", str(lr)],
            arm_args(root),
            root,
            full=True,
        )
        rec["lr"], rec["root"] = lr, root
        fulls.append(rec)
        print(f"  best selection loss {rec['best_val_loss']:.4f} ({rec['fit_s']:.0f} s)", flush=True)
    chosen = min(fulls, key=lambda r: r["best_val_loss"])
    test_arm(chosen, arm_args(chosen["root"]), chosen["root"], full=True)
    records["full"] = chosen
    default_lr = default_learning_rate()
    for name in list(arms):
        extra = list(ARMS[name])
        if name.endswith("lr10x"):
            if math.isclose(10 * chosen["lr"], default_lr) and name == "lr10x":
                print(f"LoRA arm lr10x: 10x {chosen['lr']:g} is the default rate, the lora arm already ran it")
                arms.remove(name)
                continue
            extra += ["--model.learning_rate", f"{10 * chosen['lr']:g}"]
        root = out / name
        print(f"LoRA arm {name} {' '.join(extra)} ...", flush=True)
        base_args = arm_args(root)
        rec = run_arm(name, extra, base_args, root, full=False)
        test_arm(rec, base_args, root, full=False, score_base=not records.keys() - {"full"})  # the base once
        records[name] = rec
        print(f"  best selection loss {rec['best_val_loss']:.4f} ({rec['fit_s']:.0f} s fit)", flush=True)
        (out / "quality_partial.json").write_text(json.dumps(strip(records, fulls), indent=1))
    first_lora = records[arms[0]]
    results = {"base": first_lora["base_metrics"], "full": chosen["metrics"]}
    results.update({name: records[name]["metrics"] for name in arms})
    counts = rows_scored(out / arms[0] / "test.log")
    table = results_table(results, counts, arms)
    report = render_report(args, trained, counts, fulls, chosen, records, arms, table, time.monotonic() - started)
    (out / "quality.md").write_text(report)
    (out / "quality.json").write_text(
        json.dumps({"results": results, "rows": counts, "trained": trained, "runs": strip(records, fulls)}, indent=1)
    )
    print(report)


def strip(records: Mapping[str, dict], fulls: Sequence[dict]) -> dict:
    keep = ("arm", "args", "fit_s", "test_s", "best_val_loss", "lr")
    return {
        "arms": {k: {f: v for f, v in r.items() if f in keep} for k, r in records.items()},
        "full_grid": [{f: v for f, v in r.items() if f in keep} for r in fulls],
    }


def render_report(args, trained, counts, fulls, chosen, records, arms, table, seconds) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    grid = ", ".join(f"{r['lr']:g}: {r['best_val_loss']:.4f}" for r in fulls)
    timing = "; ".join(f"{name} fit {r['fit_s']:.0f} s, test {r.get('test_s', 0):.0f} s" for name, r in records.items())
    lines = [
        f"## make quality{' --quick' if args.quick else ''} ({date.today().isoformat()}, commit "
        f"{commit.stdout.strip() or '?'}, {platform.machine()}, {os.cpu_count()} cores)",
        "",
        f"Training rows per task: {', '.join(f'{t} {n}' for t, n in trained.items())} (the project carves its "
        f"selection rows from them); {args.epochs} epoch(s) of configs/default.yaml for every arm: the same "
        "optimizer steps over the same tokens.",
        f"Evaluation rows (never trained on, never used for selection): "
        f"{', '.join(f'{t} {n}' for t, n in counts.items())}; accuracies with a 95% Wilson interval.",
        f"Full fine-tuning learning rate chosen on the selection loss: {chosen['lr']:g} (grid {grid}).",
        f"Time: {timing}; {seconds / 60:.1f} min in all.",
        "",
        table,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
