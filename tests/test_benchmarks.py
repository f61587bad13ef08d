"""The benchmark harnesses start and produce their tables (on tiny models; no timing asserts)."""

import re
import subprocess
import sys

import pytest
from conftest import REPO, SHARED_DATA, needs_shared_data

pytestmark = pytest.mark.slow


def run(script, *args, compile=True):
    """A benchmark script in a clean environment; ``compile=False`` runs its workers eager (dynamo off):
    for harness checks of many runs, where compiling each would cost minutes and test nothing new."""
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": "/tmp"}
    if not compile:
        env["TORCH_COMPILE_DISABLE"] = "1"
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True, timeout=900, env=env
    )


@pytest.fixture
def real_rows():
    for task in ("bool_q", "common_gen", "xsum"):
        needs_shared_data(task)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # GPT-2 has dropout of its own, which the check turns off
def test_bench_runs_the_cli_and_the_trainer_on_the_same_batches(real_rows, tiny_models, tmp_path, arch):
    out = tmp_path / "bench.md"
    done = run("bench.py", "--smoke", "--model", str(tiny_models[arch]), "--output", str(out), "--batch-size", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    assert "| lora_lightning |" in table and "| Transformers Trainer + PEFT |" in table and "speed ratio" in table
    assert "configs/default.yaml` (default callbacks)" in table and "optim adamw_torch" in table
    assert "same batches in every round: yes; same initial adapter on both sides: yes" in table
    # the loss curves step by step, and the check: same first batch and model (LoRA B = 0), then within tolerance
    # (timed round 1, then the loss check's own pair with every dropout off and float32 throughout on both sides)
    number = r"([\d.]+) \| ([\d.]+) \| [+-][\d.]+"
    steps = re.findall(rf"^\| (\d)[^|]* \| {number} \| {number} \|$", table, re.M)
    assert [s[0] for s in steps] == ["1", "2", "3"]
    assert float(steps[0][1]) == pytest.approx(float(steps[0][2]), abs=0.01)
    assert float(steps[0][3]) == pytest.approx(float(steps[0][4]), abs=1e-3)  # float32 on both sides
    assert "loss check, every dropout off, float32: ours" in done.stdout  # its own pair (the default has 0.1)
    assert "loss check (every dropout off and float32 throughout on both sides)" in table and "**PASS**" in table


def test_bench_skips_without_the_real_rows(tmp_path):
    done = run("bench.py", "--smoke", "--data-dir", str(tmp_path), "--output", str(tmp_path / "b.md"))
    assert done.returncode == 0 and "skipped" in done.stdout and not (tmp_path / "b.md").exists()


def test_lora_vs_full_measures_memory_and_files(tmp_path):
    out = tmp_path / "lvf.md"
    done = run("lora_vs_full.py", "--smoke", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    full = re.search(
        r"^\| tiny \| full \| [\d,]+ of [\d,]+ \| float32 \| (\d+) \| -?\d+ \| [\d.]+ \| ([\d.]+) \| ([\d.]+) \|",
        table,
        re.M,
    )
    lora = re.search(
        r"^\| tiny \| lora \| [\d,]+ of [\d,]+ \| bfloat16 \| (\d+) \| -?\d+ \| [\d.]+ \| ([\d.]+) \| ([\d.]+) \|",
        table,
        re.M,
    )
    assert full and lora, table
    assert float(lora[2]) < float(full[2]) and float(lora[3]) < float(full[3])  # files written, adapter smaller


def test_option_variants_run(real_rows, tiny_models, tmp_path):
    out = tmp_path / "bench.md"
    # eleven runs; the compiled default is run by the test above
    done = run(
        "bench.py", "--smoke", "--variants", "--model", str(tiny_models["gpt2"]), "--output", str(out), compile=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "variants.md").read_text()
    options = ("default", "fp32 (32-true", "float32 base", "old head", "dropout masks from inductor", "LoRA dropout 0")
    options += ("LoRA on attention only", "full fine-tuning (model.lora false", "full-logits head")
    options += ("compiled blocks keep what is fastest", "sdpa attention")  # flip the default config's choices back
    for option in (*options, "gradient checkpointing", "eager (model.compile false)"):
        assert f"| {option}" in table
    assert "packing" in table  # a row, or the line saying this version has no data.packing
    assert f"from {SHARED_DATA}" in table  # the real rows


def test_variants_only_runs_the_default_and_the_named_options(real_rows, tiny_models, tmp_path):
    out = tmp_path / "bench.md"
    done = run(
        "bench.py", "--smoke", "--variants", "--only", "full fine-tuning", "LoRA on attention",
        "--model", str(tiny_models["gpt2"]), "--output", str(out), compile=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (tmp_path / "variants.md").read_text().splitlines()
    names = [line[2:].split(" | ")[0] for line in lines if line.startswith("| ") and not line.startswith("| ---")]
    assert [name.split(" (")[0].split(":")[0] for name in names[1:]] == [
        "default", "LoRA on attention only", "full fine-tuning"
    ]  # fmt: skip
    assert "no packing row" not in "\n".join(lines)  # left out by --only, not missing from this version


def test_data_scale_bench_prepares_trains_and_reads_its_cache(tiny_models, tmp_path):
    needs_shared_data("bool_q")
    done = run("data_scale.py", "--smoke", "--sizes", "600", "--model", str(tiny_models["llama"]), compile=False)
    assert done.returncode == 0, done.stderr[-3000:]
    # 600 rows: 60 selection and 60 evaluation rows (10%, under the caps of 200 and 100), 480 trained
    assert re.search(r"^\| 600 \| 480 \| 60 \| 60 \| [\d.]+ \| [\d,]+ \| [\d.]+ \|", done.stdout, re.M), done.stdout
    assert "Every row trains but the held-out ones: yes" in done.stdout and "harness OK" in done.stdout


def test_step_profile_sums_every_category_of_a_real_step(real_rows, tiny_models, tmp_path):
    out = tmp_path / "profile.md"
    done = run("profile_step.py", "--smoke", "--model", str(tiny_models["llama"]), "--output", str(out), compile=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = dict(
        (name, (float(share), float(gflop)))
        for name, share, gflop in re.findall(
            r"^\| ([^|*]+?) \| [\d.]+ \| ([\d.]+)% \| ([\d.,]+) \|", out.read_text(), re.M
        )
    )
    assert set(rows) == {
        "frozen-base GEMMs", "LoRA matmuls", "completion head and loss", "attention",
        "fused elementwise (compiled)", "elementwise (eager)", "optimizer", "data", "framework and Python",
    }  # fmt: skip
    assert sum(share for share, _ in rows.values()) == pytest.approx(100, abs=0.6)
    assert rows["frozen-base GEMMs"][1] > 0 and rows["LoRA matmuls"][1] > 0  # the profiler's FLOPs, by shape
