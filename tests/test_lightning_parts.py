"""Lightning's own parts where they do the job: no private Lightning method overridden, the throughput
callback is Lightning's ThroughputMonitor, last.ckpt keeps what stock ModelCheckpoint would not, and a
default run prints nothing a user cannot act on."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.demos.boring_classes import BoringModel

from lora_lightning.callbacks import EarlyStop, LastCheckpoint, ThroughputLogger
from lora_lightning.cli import LoRALightningCLI


@pytest.mark.parametrize("cls", [EarlyStop, LastCheckpoint, ThroughputLogger, LoRALightningCLI])
def test_no_private_lightning_method_is_overridden(cls):
    lightning_bases = [b for b in cls.__mro__[1:] if b.__module__.startswith("lightning.")]
    overridden = [
        name
        for name, value in vars(cls).items()
        if name.startswith("_") and not name.startswith("__") and callable(value)
        if any(name in vars(base) for base in lightning_bases)
    ]
    assert overridden == [], f"{cls.__name__} overrides private Lightning methods {overridden}"


def test_throughput_logger_is_lightnings_monitor():
    assert issubclass(ThroughputLogger, ThroughputMonitor)
    assert inspect.signature(ThroughputLogger).parameters["window"].default == 5


class LossGoesUp(BoringModel):
    """A validation metric that gets worse every epoch; optionally a crash at one step."""

    def __init__(self, crash_at: int | None = None):
        super().__init__()
        self.crash_at = crash_at

    def training_step(self, batch, batch_idx):
        if self.global_step == self.crash_at:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.log("worse", float(self.current_epoch))


def tiny_trainer(tmp_path: Path, *callbacks, **kwargs) -> Trainer:
    defaults = dict(limit_train_batches=5, limit_val_batches=1, max_epochs=4, logger=False)
    return Trainer(
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        **{**defaults, **kwargs},
    )


def test_early_stop_is_off_without_patience_and_stops_with_it(tmp_path):
    off = tiny_trainer(tmp_path, EarlyStop(monitor="worse"))
    off.fit(LossGoesUp())
    assert off.current_epoch == 4 and not off.should_stop
    on = tiny_trainer(tmp_path, EarlyStop(patience=1, monitor="worse"))
    on.fit(LossGoesUp())
    assert on.current_epoch == 2  # epoch 0 sets the best, epoch 1 does not improve on it: stop


def saved_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def test_last_checkpoint_is_written_at_the_end_of_fit_even_between_intervals(tmp_path):
    last = LastCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=2)
    tiny_trainer(tmp_path, last, max_epochs=1).fit(LossGoesUp())
    assert saved_step(tmp_path / "ckpt" / "last.ckpt") == 5  # stock ModelCheckpoint keeps step 4 here


def test_last_checkpoint_is_kept_as_it_was_on_an_error_that_is_not_sigterm(tmp_path):
    last = LastCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=2)
    with pytest.raises(RuntimeError, match="boom"):
        tiny_trainer(tmp_path, last, max_epochs=1).fit(LossGoesUp(crash_at=3))
    assert saved_step(tmp_path / "ckpt" / "last.ckpt") == 2
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt"]


NOISE = ("LeafSpec", "Total FLOPs", "not supported by the model summary", "💡 Tip", "`weights_only` was not set")


def test_a_default_fit_prints_nothing_a_user_cannot_act_on_and_logs_lightnings_throughput(tiny_models, tmp_path):
    root = tmp_path / "run"
    out = run_cli(
        "fit",
        "--config",
        str(REPO / "configs" / "default.yaml"),
        "--model.model_name",
        str(tiny_models["llama"]),
        "--trainer.default_root_dir",
        str(root),
        "--data.cache_dir",
        str(root / "data_cache"),
        "--trainer.max_epochs",
        "1",
        "--trainer.log_every_n_steps",
        "1",
        "--data.max_examples_per_task",
        "16",
        "--data.max_val_examples_per_task",
        "4",
        "--data.batch_size",
        "4",
        warnings=True,  # Python's default warning filters: what a user sees
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    printed = out.stdout + out.stderr
    assert [line for line in printed.splitlines() if any(n in line for n in NOISE)] == []

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (root / "lightning_logs").glob("version_0/events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    scalars = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert scalars["train/samples"][-1] == 48  # examples (16 per task), not packed rows
    assert 0 < min(scalars["train/device/mfu"]) and max(scalars["train/device/mfu"]) < 1  # CPU peak measured
    assert min(scalars["train/device/items_per_sec"]) > 0
    assert scalars["train/lengths"][-1] > 48  # real tokens


def test_adapter_export_picks_the_best_by_its_mode_like_model_checkpoint():
    from types import SimpleNamespace

    from lora_lightning.callbacks import AdapterCheckpoint
    from lora_lightning.errors import UserInputError

    export = AdapterCheckpoint(monitor="val/acc", mode="max")
    exported = []
    export.export = lambda trainer, module, which: exported.append(trainer.global_step)
    for step, acc in [(1, 0.5), (2, 0.7), (3, 0.6)]:
        metrics = {"val/acc": torch.tensor(acc)}
        trainer = SimpleNamespace(sanity_checking=False, callback_metrics=metrics, global_step=step)
        export.on_validation_end(trainer, None)
    assert exported == [1, 2] and export.best_step == 2 and export.best_score == pytest.approx(0.7)
    with pytest.raises(UserInputError, match="adapter_export.mode"):
        AdapterCheckpoint(mode="maximum")


def test_measuring_the_peak_leaves_the_global_random_stream_alone():
    """The peak is measured in ``setup``, before ``configure_model`` draws the LoRA weights: a draw from
    the global generator there changed the seeded initial adapter (bench.py's same-init check caught it)."""
    import torch

    from lora_lightning.model.flops import measured_peak_flops

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    assert measured_peak_flops(torch.float32, size=64, seconds=0.01) > 0
    assert torch.equal(torch.rand(3), expected)
