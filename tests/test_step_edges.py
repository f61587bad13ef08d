"""The step loss at its edges: windows that Lightning cuts short, epoch boundaries, a resume mid-window.

The definition (as in ``test_step_loss.py``): the gradient of an optimizer step is that of (sum of
completion-token losses of the micro-batches that trained in it) / (their completion tokens). A
callback records the micro-batches of each step as the training loop runs them and recomputes that
quantity and its gradient at the same weights, right before the optimizer step; the module's
gradients and its logged ``train/loss`` must equal it, step by step.
"""

import os
import signal

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import Logger

from lora_lightning import FlanDataModule, LoRAModule
from lora_lightning.callbacks import LastCheckpoint

BATCH = 2  # 16 training examples (8 bool_q, 8 xsum): 8 batches an epoch


class Definition(Callback):
    """Per optimizer step: which batches trained in it, and the loss and gradients of the definition."""

    def __init__(self):
        self.window: list[tuple[int, dict]] = []
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.window.append((batch_idx, batch))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        params = [p for p in pl_module.model.parameters() if p.requires_grad]
        with torch.enable_grad():
            parts = [pl_module.completion_loss(batch) for _, batch in self.window]
            tokens = sum(int(counts.sum()) for _, counts in parts)
            loss = sum(sums.sum() for sums, _ in parts) / tokens
            expected = torch.autograd.grad(loss, params)
        self.steps.append(
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step + 1,
                "batches": [i for i, _ in self.window],
                "tokens": tokens,
                "loss": float(loss),
                "expected": expected,
                "actual": [p.grad.detach().clone() for p in params],
            }
        )
        self.window = []


class Memory(Logger):
    """What the module logs, kept in memory."""

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))


def fit(model_dir, root, accumulate, *, batch_size=BATCH, callbacks=(), ckpt_path=None, **trainer_args):
    seed_everything(0)
    data = FlanDataModule(
        tasks=["bool_q", "xsum"],
        max_examples_per_task=8,
        batch_size=batch_size,
        max_length=256,
        tokenizer=str(model_dir),
        cache_dir=None,
    )
    module = LoRAModule(
        model_name=str(model_dir),
        lora_r=4,
        lora_dropout=0.0,
        learning_rate=1.0,
        optimizer=torch.optim.SGD,
        warmup_ratio=0.0,
    )
    definition, memory = Definition(), Memory()
    trainer = Trainer(
        accumulate_grad_batches=accumulate,
        precision="32-true",
        accelerator="cpu",
        logger=memory,
        log_every_n_steps=1,
        enable_checkpointing=any(isinstance(c, LastCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[definition, *callbacks],
        default_root_dir=root,
        **trainer_args,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return definition.steps, module, memory


def logged(memory: Memory, key: str) -> list[float]:
    return [float(metrics[key]) for _, metrics in memory.rows if key in metrics]


def assert_each_step_is_the_definition(steps, module, memory):
    for step in steps:
        where = f"epoch {step['epoch']} step {step['step']} batches {step['batches']}"
        for actual, expected in zip(step["actual"], step["expected"]):
            scale = float(expected.abs().max())
            torch.testing.assert_close(
                actual, expected, rtol=1e-4, atol=1e-5 * scale, msg=lambda m, where=where: f"{where}: {m}"
            )
    history = {s: loss for s, loss in module.history["train_loss"]}  # also steps before a resume
    assert {s["step"]: history.get(s["step"]) for s in steps} == pytest.approx(
        {s["step"]: s["loss"] for s in steps}, rel=1e-5
    )
    assert len(history) == steps[-1]["step"]
    assert logged(memory, "train/loss")[-len(steps) :] == pytest.approx([s["loss"] for s in steps], rel=1e-5)
    assert logged(memory, "train/step_tokens")[-len(steps) :] == [s["tokens"] for s in steps]


@pytest.mark.parametrize("limit", [5, 0.625])  # 5 of 8 batches: windows of 4 and 1 (0.625 x 8 = 5)
def test_a_window_cut_by_limit_train_batches_is_normalised_by_its_own_tokens(tiny_models, tmp_path, limit):
    steps, module, memory = fit(tiny_models["llama"], tmp_path, 4, limit_train_batches=limit, max_epochs=2)
    assert [(s["epoch"], s["batches"]) for s in steps] == [(0, [0, 1, 2, 3]), (0, [4]), (1, [0, 1, 2, 3]), (1, [4])]
    assert_each_step_is_the_definition(steps, module, memory)
    # epoch 2's first step logs its own mean, nothing of epoch 1's last window
    assert module.history["train_loss"][2] == [3, pytest.approx(steps[2]["loss"], rel=1e-5)]


def test_an_epoch_that_is_not_a_multiple_of_accumulate_ends_with_its_own_short_window(tiny_models, tmp_path):
    steps, module, memory = fit(tiny_models["llama"], tmp_path, 3, max_epochs=2)
    windows = [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [(s["epoch"], s["batches"]) for s in steps] == [(e, w) for e in (0, 1) for w in windows]
    assert_each_step_is_the_definition(steps, module, memory)


class SigtermAfter(Callback):
    """Sends this process SIGTERM after a batch: Lightning stops after it, LastCheckpoint saves."""

    def __init__(self, batch_idx: int):
        self.batch_idx = batch_idx

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.batch_idx:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_resume_in_the_middle_of_a_window_steps_on_the_batches_after_it(tiny_models, tmp_path):
    """SIGTERM after batch_idx 5 of the window 4..7: last.ckpt holds the weights and optimizer state after
    step 1 (no gradients: batches 4 and 5 are lost with the process) and the position 6; the resumed
    run's step 2 trains on batches 6 and 7 alone, normalised by their own tokens."""
    ckpt = LastCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=100)
    with pytest.raises(SystemExit):
        fit(tiny_models["llama"], tmp_path, 4, callbacks=[ckpt, SigtermAfter(5)], max_epochs=2)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 1
    assert saved["FlanDataModule"]["train_position"] == {"epoch": 0, "batches": 6}

    steps, module, memory = fit(tiny_models["llama"], tmp_path, 4, ckpt_path=str(ckpt.last_path), max_epochs=2)
    assert [(s["epoch"], s["step"], s["batches"]) for s in steps] == [
        (0, 2, [6, 7]),
        (1, 3, [0, 1, 2, 3]),
        (1, 4, [4, 5, 6, 7]),
    ]
    assert_each_step_is_the_definition(steps, module, memory)
