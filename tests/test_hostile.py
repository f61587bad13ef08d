"""Hostile and broken inputs: each gets a clear one-line error and leaves existing outputs as they were."""

import hashlib
import json
import shutil

import lightning as L
import pytest
import torch
from conftest import run_cli, tiny_fit_args

from lora_lightning import AdapterCheckpoint, FlanDataModule, LoRAModule
from lora_lightning.cli import main
from lora_lightning.errors import TrainingHalted

pytestmark = pytest.mark.slow


def fit_args(model, root, *extra):
    keys = {
        "data.max_examples_per_task": 4,
        "data.max_val_examples_per_task": 2,
        "data.batch_size": 4,
        "samples.samples_per_task": 0,
        "trainer.max_epochs": 1,
    }
    return tiny_fit_args(model, root, keys, *extra)


def snapshot(root):
    """Every existing file's content hash: what "nothing overwritten" is checked against."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def unchanged(before, root):
    after = snapshot(root)
    return all(after.get(k) == v for k, v in before.items())


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "run"
    out = run_cli(*fit_args(tiny_models["llama"], root))
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def one_error_line(out, code=2):
    assert out.returncode == code, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("lora-lightning: ")]
    assert len(lines) == 1
    return lines[0]


def test_truncated_checkpoint(trained, tiny_models, tmp_path):
    bad = tmp_path / "truncated.ckpt"
    data = (trained / "ckpt" / "last.ckpt").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    before = snapshot(trained)
    line = one_error_line(run_cli(*fit_args(tiny_models["llama"], trained, "--ckpt_path", str(bad))))
    assert "truncated, corrupt or unsafe" in line and "truncated.ckpt" in line
    assert unchanged(before, trained) and snapshot(trained).keys() == before.keys()


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (shutil.copyfile, (__file__, self.marker))


def test_checkpoint_that_would_run_code_is_refused(trained, tiny_models, tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode(str(marker))}, evil)
    before = snapshot(trained)
    line = one_error_line(run_cli(*fit_args(tiny_models["llama"], trained, "--ckpt_path", str(evil))))
    assert "evil.ckpt" in line and "unsafe" in line
    assert not marker.exists() and unchanged(before, trained)


def test_resuming_with_another_rank_names_the_mismatch(trained, tiny_models, tmp_path):
    # The CLI restores a checkpoint's own hyperparameters; in Python a module with another rank
    # can be handed a checkpoint, and must be refused by name, not with a size-mismatch traceback.
    from lora_lightning.model.checkpointing import CheckpointMismatchError

    before = snapshot(trained)
    module = LoRAModule(model_name=str(tiny_models["llama"]), lora_r=8)
    data = FlanDataModule(tokenizer=str(tiny_models["llama"]), max_examples_per_task=4, batch_size=4, cache_dir=None)
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    with pytest.raises(
        CheckpointMismatchError,
        match=r"has shape \(4, 64\) but this model's is \(8, 64\); "
        "it was written with another lora_r",
    ):
        trainer.fit(module, datamodule=data, ckpt_path=str(trained / "ckpt" / "last.ckpt"))
    assert unchanged(before, trained)


def test_adapter_on_another_architecture_is_refused(trained, tiny_models):
    out = run_cli(
        "generate",
        "--adapter",
        str(trained / "adapter"),
        "--base",
        str(tiny_models["gpt2"]),
        "--prompt",
        "hi",
        "--max_new_tokens",
        "2",
    )
    line = one_error_line(out)
    assert "cannot be loaded onto base" in line and "gpt2" in line


def test_corrupt_adapter_weights_are_refused(trained, tmp_path):
    broken = tmp_path / "adapter"
    shutil.copytree(trained / "adapter", broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 100)
    line = one_error_line(run_cli("generate", "--adapter", str(broken), "--prompt", "hi"))
    assert "cannot be loaded onto base" in line


def test_remote_code_never_runs_unless_allowed(tiny_models, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_models["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="my_custom_lm",
        auto_map={"AutoConfig": "modeling_custom.Config", "AutoModelForCausalLM": "modeling_custom.Model"},
    )
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-ran"
    (folder / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    root = tmp_path / "run"
    line = one_error_line(run_cli(*fit_args(folder, root)))
    assert "trust_remote_code" in line
    assert not marker.exists()
    assert not (root / "adapter").exists()


def nan_at(step):
    """A LoRAModule.completion_loss that returns NaN at one optimizer step."""
    original = LoRAModule.completion_loss

    def loss(self, batch):
        value, count = original(self, batch)
        if self.training and self.global_step == step:
            value = value * float("nan")
        return value, count

    return loss


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tiny_models, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(LoRAModule, "completion_loss", nan_at(3))
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(
            fit_args(
                tiny_models["llama"],
                root,
                "--data.max_examples_per_task",
                "12",
                "--data.batch_size",
                "2",
                "--last_checkpoint.every_n_train_steps",
                "1",
            )
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "lora-lightning: stopped: non-finite loss at step 3" in err and "Traceback" not in err
    state = torch.load(root / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 3  # the last good step; nothing after the NaN was saved
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (root / "adapter").exists()


def test_skip_mode_skips_exactly_the_bad_update(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(LoRAModule, "completion_loss", nan_at(3))
    snapshots = {}

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            snapshots[trainer.global_step] = {
                n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad
            }

    module = LoRAModule(model_name=str(tiny_models["llama"]), lora_r=4, nonfinite="skip", learning_rate=1e-2)
    data = FlanDataModule(tokenizer=str(tiny_models["llama"]), max_examples_per_task=4, batch_size=2, cache_dir=None)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Watch(), AdapterCheckpoint()],
    )
    trainer.fit(module, datamodule=data)
    assert module.step_loss.skipped_updates == 1 and trainer.global_step == 6
    for name, before in snapshots[3].items():
        assert torch.equal(snapshots[4][name], before)  # the NaN step changed nothing
        assert torch.isfinite(snapshots[6][name]).all()
    assert any(not torch.equal(snapshots[5][n], snapshots[4][n]) for n in snapshots[4])  # training went on
    assert issubclass(TrainingHalted, RuntimeError)


def test_checkpoint_io_writes_atomically_and_clears_stale_temporaries(tmp_path):
    from lora_lightning.checkpoint_io import AtomicCheckpointIO, CheckpointError, read_checkpoint

    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 1}, target)
    stale = tmp_path / ".last.ckpt.tmp-999"  # as a SIGKILL mid-write leaves it
    stale.write_bytes(b"half")
    io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "global_step": 2}, target)
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert read_checkpoint(target)["global_step"] == 2
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")
