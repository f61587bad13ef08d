"""FSDP2 (configs/fsdp.yaml) on 2 CPU processes with gloo: the same adapter as one process, half the
parameter bytes per rank, a plain peft adapter, checkpoints of what trains, kill -9 and resume."""

import re
import signal
import subprocess
import time

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file
from test_reliability import args_for, audit, history, start_fit, wait_for_steps

pytestmark = pytest.mark.slow


def wait_until_gone(pattern, timeout=120):
    deadline = time.time() + timeout
    while subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0:
        assert time.time() < deadline, f"a process of {pattern} outlived its killed rank 0"
        time.sleep(0.2)


def fsdp_args(model, root, *extra):
    return args_for(
        model, root, "--data.batch_size", "2", "--trainer.accelerator", "cpu", *extra, overlays=("fsdp.yaml",)
    )


def held_per_rank(output):
    line = re.search(r"Parameters held per rank: ([\d. /]+) MB of ([\d.]+) MB", output)
    assert line, output[-3000:]
    return [float(x) for x in line.group(1).split(" / ")], float(line.group(2))


@pytest.mark.parametrize("quantization", [None, "nf4"])
def test_fsdp_on_two_processes_trains_the_adapter_of_one_process(tiny_models, tmp_path, quantization):
    """nf4: FSDP-QLoRA, the 4-bit base stored in the base dtype so that FSDP2 shards it with the rest."""
    if quantization:
        pytest.importorskip("bitsandbytes", reason="the [qlora] extra (bitsandbytes) is not installed")
    quantized = ("--model.quantization", quantization, "--model.compile", "false") if quantization else ()
    one, two = tmp_path / "one", tmp_path / "fsdp"
    single = run_cli(
        *args_for(tiny_models["llama"], one, "--data.batch_size", "4", "--trainer.max_epochs", "2", *quantized)
    )
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = run_cli(*fsdp_args(tiny_models["llama"], two, "--trainer.max_epochs", "2", *quantized), fresh=True)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    output = sharded.stdout + sharded.stderr

    # each rank holds half of the model between forward passes; one process holds all of it
    held, whole = held_per_rank(output)
    assert len(held) == 2 and all(0.45 * whole <= h <= 0.55 * whole for h in held), (held, whole)
    held_one, whole_one = held_per_rank(single.stdout + single.stderr)
    assert held_one == [whole_one] and whole_one == pytest.approx(whole, abs=0.11)

    # both ranks trained, each epoch on disjoint shards that together are the whole training set
    everything = {i for row in audit(one) for i in row["ids"]}
    for epoch in (0, 1):
        ids0 = [i for row in audit(two, 0) if row["epoch"] == epoch for i in row["ids"]]
        ids1 = [i for row in audit(two, 1) if row["epoch"] == epoch for i in row["ids"]]
        assert ids0 and ids1 and not set(ids0) & set(ids1) and set(ids0) | set(ids1) == everything

    # the same steps, validation losses and adapter as one process on the same global batches
    h1, h2 = history(one), history(two)
    assert h1["global_step"] == h2["global_step"] == 12
    assert h1["val_loss"][0][1] == pytest.approx(h2["val_loss"][0][1], abs=1e-5)
    assert h1["val_loss"][-1][1] == pytest.approx(h2["val_loss"][-1][1], abs=1e-4)
    w1 = load_file(one / "adapter_last" / "adapter_model.safetensors")
    w2 = load_file(two / "adapter_last" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    assert all(w1[k].shape == w2[k].shape for k in w1)  # gathered whole, not one rank's shard
    assert all(w2[k].abs().max() > 1e-3 for k in w2 if "lora_B" in k)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-4)

    # the export is an ordinary peft adapter
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_models["llama"]), str(two / "adapter_last")
    )
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(w2)
    for name, tensor in w2.items():
        key = name.replace(".weight", ".default.weight")
        torch.testing.assert_close(loaded[key], tensor)

    # last.ckpt holds the trainable weights (gathered whole) and their optimizer state, no base weight
    state = torch.load(two / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["state_dict"] and all("lora_" in k for k in state["state_dict"])
    assert len(state["state_dict"]) == len(w2)
    assert len(state["optimizer_states"][0]["state"]) == len(w2)


def test_fsdp_killed_run_resumes_with_the_same_batches(tiny_models, tmp_path):
    every = 2
    extra = ("--trainer.max_epochs", "2", "--last_checkpoint.every_n_train_steps", str(every))
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    done = run_cli(*fsdp_args(tiny_models["llama"], reference, *extra), fresh=True)
    assert done.returncode == 0, done.stderr[-3000:]

    with open(tmp_path / "first.log", "w") as log:
        proc = start_fit(fsdp_args(tiny_models["llama"], crashed, *extra), log)
        try:
            wait_for_steps(crashed, proc, 8)  # mid-epoch: 6 steps an epoch
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=120)
        finally:
            proc.kill()
    wait_until_gone(str(crashed))  # rank 1 (the launcher's child) fails at its next collective; it may log a row first
    trained = {rank: audit(crashed, rank) for rank in (0, 1)}
    saved = torch.load(crashed / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert 0 <= trained[0][-1]["step"] - saved <= every + 1

    resumed = run_cli(*fsdp_args(tiny_models["llama"], crashed, *extra, "--ckpt_path", "last"), warnings=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr + resumed.stdout
    for rank in (0, 1):
        rows = audit(crashed, rank)
        before, after = rows[: len(trained[rank])], rows[len(trained[rank]) :]
        kept = [r for r in before if r["step"] <= saved]
        combined = [(r["epoch"], r["batch_idx"], r["ids"]) for r in kept + after]
        expected = [(r["epoch"], r["batch_idx"], r["ids"]) for r in audit(reference, rank)]
        steps = ([r["step"] for r in before], [r["step"] for r in after])
        assert combined == expected, (rank, saved, steps)
    assert history(crashed)["global_step"] == history(reference)["global_step"] == 12
    w_ref = load_file(reference / "adapter_last" / "adapter_model.safetensors")
    w_res = load_file(crashed / "adapter_last" / "adapter_model.safetensors")
    for k in w_ref:
        torch.testing.assert_close(w_res[k], w_ref[k], rtol=1e-4, atol=1e-6)  # optimizer state restored too
