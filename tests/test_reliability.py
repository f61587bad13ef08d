"""Scale-out and crash safety: DDP on 2 CPU processes, SIGKILL / SIGTERM and resume, non-finite losses."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, run_cli, tiny_fit_args

pytestmark = pytest.mark.slow


def args_for(model, root, *extra, overlays=()):
    keys = {
        "model.learning_rate": 0.01,
        "model.lora_dropout": 0,
        "data.max_examples_per_task": 8,
        "data.max_val_examples_per_task": 4,
        "samples.samples_per_task": 0,
        "trainer.precision": "32-true",
    }
    sample_audit = "--trainer.callbacks+=lora_lightning.callbacks.SampleAudit"
    return tiny_fit_args(model, root, keys, sample_audit, *extra, overlays=overlays)


def audit(root, rank=0):
    path = root / "sample_audit" / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def history(root):
    return json.loads((root / "adapter_last" / "training_history.json").read_text())


@pytest.mark.parametrize("quantization", [None, "nf4"])
def test_ddp_on_two_cpu_processes_matches_one_process(tiny_models, tmp_path, quantization):
    if quantization:
        pytest.importorskip("bitsandbytes", reason="the [qlora] extra (bitsandbytes) is not installed")
    one, two = tmp_path / "one", tmp_path / "two"
    quantized = ("--model.quantization", quantization, "--model.compile", "false") if quantization else ()
    single = run_cli(
        *args_for(tiny_models["llama"], one, "--data.batch_size", "4", "--trainer.max_epochs", "2", *quantized)
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli(
        *args_for(
            tiny_models["llama"],
            two,
            "--data.batch_size",
            "2",
            "--trainer.max_epochs",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.devices",
            "2",
            "--trainer.accelerator",
            "cpu",
            *quantized,
        ),
        fresh=True,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # both ranks trained, on disjoint shards that together are the whole training set, each epoch
    rank0, rank1 = audit(two, 0), audit(two, 1)
    everything = {i for row in audit(one) for i in row["ids"]}
    for epoch in (0, 1):
        ids0 = [i for row in rank0 if row["epoch"] == epoch for i in row["ids"]]
        ids1 = [i for row in rank1 if row["epoch"] == epoch for i in row["ids"]]
        assert ids0 and ids1 and not set(ids0) & set(ids1)
        assert set(ids0) | set(ids1) == everything and len(everything) == 24
    # same global batches (rank shards interleave: 2 x 2 = the single run's 4) and schedule
    h1, h2 = history(one), history(two)
    assert h1["global_step"] == h2["global_step"] == 12
    assert h1["val_loss"][0][1] == pytest.approx(h2["val_loss"][0][1], abs=1e-5)
    assert h1["val_loss"][-1][1] == pytest.approx(h2["val_loss"][-1][1], abs=1e-4)
    # ... so the same adapter, up to float reduction order; and it is an ordinary peft adapter
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    w1, w2 = (
        load_file(one / "adapter_last" / "adapter_model.safetensors"),
        load_file(two / "adapter_last" / "adapter_model.safetensors"),
    )
    assert w1.keys() == w2.keys()
    b = [k for k in w1 if "lora_B" in k]
    assert all(w1[k].abs().max() > 1e-3 for k in b)  # trained away from the zero init
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-3, atol=1e-4)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_models["llama"]), str(two / "adapter_last")
    )
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


def start_fit(args, log):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "lora_lightning", *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def wait_for_steps(root, proc, steps, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = audit(root)
        if rows and rows[-1]["step"] >= steps:
            return rows[-1]["step"]
        assert proc.poll() is None, "fit ended before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError("fit did not reach the step in time")


@pytest.mark.parametrize(
    ("sig", "packing", "quantization"),
    [
        (signal.SIGKILL, "false", None),
        (signal.SIGTERM, "false", None),
        (signal.SIGKILL, "true", None),
        (signal.SIGKILL, "false", "nf4"),  # QLoRA: the 4-bit base is rebuilt the same on resume
    ],
)
def test_interrupted_fit_resumes_without_repeating_or_skipping(tiny_models, tmp_path, sig, packing, quantization):
    if quantization:
        pytest.importorskip("bitsandbytes", reason="the [qlora] extra (bitsandbytes) is not installed")
    every = 2
    extra = ("--data.batch_size", "2", "--trainer.max_epochs", "2", "--last_checkpoint.every_n_train_steps", str(every))
    extra += ("--data.packing", packing)
    if quantization:
        extra += ("--model.quantization", quantization, "--model.compile", "false")
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    done = run_cli(*args_for(tiny_models["llama"], reference, *extra))
    assert done.returncode == 0, done.stderr[-3000:]

    with open(tmp_path / "first.log", "w") as log:
        proc = start_fit(args_for(tiny_models["llama"], crashed, *extra), log)
        try:
            wait_for_steps(crashed, proc, 17)  # mid-epoch: 12 steps an epoch
            proc.send_signal(sig)
            proc.wait(timeout=120)
        finally:
            proc.kill()
    trained = audit(crashed)
    saved = torch.load(crashed / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    lost = trained[-1]["step"] - saved
    print(f"FAULT {sig.name}: stopped after step {trained[-1]['step']}, last.ckpt at step {saved}, {lost} lost")
    if sig == signal.SIGTERM:
        assert proc.returncode != 0 and lost == 0  # preemption saved exactly where it stopped
    else:
        assert 0 <= lost <= every  # at most the checkpoint interval is lost
    # last.ckpt is whole (a SIGKILL mid-write can only leave a temporary file beside it)
    assert torch.load(crashed / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]

    resumed = run_cli(*args_for(tiny_models["llama"], crashed, *extra, "--ckpt_path", "last"), warnings=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr + resumed.stdout  # the loader's position is checkpointed
    assert not list((crashed / "ckpt").glob(".*tmp*"))  # any stale temporary file was cleaned by the next save
    rows = audit(crashed)
    before, after = rows[: len(trained)], rows[len(trained) :]
    kept = [r for r in before if r["step"] <= saved]
    combined = [(r["epoch"], r["batch_idx"], r["ids"]) for r in kept + after]
    expected = [(r["epoch"], r["batch_idx"], r["ids"]) for r in audit(reference)]
    assert combined == expected  # same batches, same order, none repeated or skipped
    final = history(crashed)["global_step"]
    assert final == history(reference)["global_step"] == 24
    state = torch.load(crashed / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert {int(s["step"]) for s in state["optimizer_states"][0]["state"].values()} == {final}
    if quantization:  # the resumed adapter is the uninterrupted one
        from safetensors.torch import load_file

        ours, theirs = (load_file(r / "adapter_last" / "adapter_model.safetensors") for r in (crashed, reference))
        assert ours.keys() == theirs.keys() and history(crashed)["base_quantization"] == quantization
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6)
