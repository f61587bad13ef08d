"""The benchmark harnesses start and produce their tables (on tiny models, in seconds; no timing asserts)."""

import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def run(script, *args):
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": "/tmp"},
    )


def test_bench_against_trainer_runs_both_systems(tiny_models, tmp_path):
    out = tmp_path / "bench.md"
    done = run("bench.py", "--smoke", "--model", str(tiny_models["llama"]), "--output", str(out), "--batch-size", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    assert "| lora_lightning |" in table and "| Transformers Trainer + PEFT |" in table and "speed ratio" in table
    # both systems got the same first batch and the same starting model (LoRA B = 0): the same loss
    import re

    ours, theirs = map(float, re.search(r"before any update\): ([\d.]+) vs ([\d.]+)", table).groups())
    assert ours == pytest.approx(theirs, abs=0.02)


def test_lora_vs_full_table_starts(tmp_path):
    out = tmp_path / "lvf.md"
    done = run("lora_vs_full.py", "--smoke", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    assert "| tiny | full |" in table and "| tiny | lora |" in table


def test_option_variants_run(tiny_models, tmp_path):
    out = tmp_path / "bench.md"
    done = run(
        "bench.py",
        "--smoke",
        "--variants",
        "--model",
        str(tiny_models["gpt2"]),
        "--output",
        str(out),
        "--batch-size",
        "2",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "variants.md").read_text()
    for option in ("default: bf16-mixed", "fp32", "full-logits head", "gradient checkpointing"):
        assert f"| {option}" in table  # (compile is left out of smoke runs: it takes minutes)
