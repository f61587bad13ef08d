"""One loss normalisation however a global batch is split: 8 x 1, 4 x 2, 2 x 4 and 2 DDP ranks x 4.

The definition: the gradient of an optimizer step is that of (sum of completion-token losses of the
whole step) / (completion tokens of the whole step). The demo mix holds two-token bool_q answers
and long xsum summaries in the same batches, so averaging per-micro-batch means (what a plain
``training_step`` returning its own mean does) gives another gradient.
"""

import pytest
import torch
from conftest import REPO, run_cli
from lightning.pytorch import Callback, Trainer, seed_everything
from safetensors.torch import load_file

from lora_lightning import FlanDataModule, LoRAModule

CONFIG = str(REPO / "configs" / "default.yaml")


class GradientCapture(Callback):
    def __init__(self):
        self.grads = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters() if p.grad is not None}


def one_step(model_dir, tmp_path, batch_size, accumulate):
    seed_everything(0)  # the same LoRA initialisation in every run
    data = FlanDataModule(
        tasks=["bool_q", "xsum"],
        max_examples_per_task=16,
        batch_size=batch_size,
        max_length=256,
        tokenizer=str(model_dir),
        cache_dir=None,
    )
    module = LoRAModule(
        model_name=str(model_dir),
        lora_r=4,
        lora_dropout=0.0,
        learning_rate=0.1,
        optimizer=torch.optim.SGD,
        warmup_ratio=0.0,
    )
    capture = GradientCapture()
    trainer = Trainer(
        max_steps=1,
        accumulate_grad_batches=accumulate,
        precision="32-true",
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[capture],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    return capture.grads, module, data


def test_accumulation_gives_the_gradient_of_the_whole_batch(tiny_models, tmp_path):
    reference, module, data = one_step(tiny_models["llama"], tmp_path, 8, 1)
    # the logged loss of the step is the per-token mean over the 8 examples, as the model itself computes it
    loader = data.train_dataloader()
    batch = next(iter(loader))
    model = module.model.get_base_model()
    assert "position_ids" in batch  # packed (data.packing is on by default): transformers' own loss on packed rows
    with torch.no_grad(), module.model.disable_adapter():
        own = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"]).loss
    assert module.history["train_loss"][0][1] == pytest.approx(float(own), abs=1e-5)
    assert {len(x) for x in data.train_set["labels"]} != 1  # the rows really differ in length
    for batch_size, accumulate in ((4, 2), (2, 4)):
        grads, _, _ = one_step(tiny_models["llama"], tmp_path, batch_size, accumulate)
        assert grads.keys() == reference.keys()
        for name in reference:
            torch.testing.assert_close(grads[name], reference[name], rtol=1e-4, atol=1e-7)


def test_two_ddp_ranks_give_the_update_of_one_device(tiny_models, tmp_path):
    def fit(root, *extra):
        done = run_cli(
            "fit",
            "--config",
            CONFIG,
            "--model.model_name",
            str(tiny_models["llama"]),
            "--model.lora_r",
            "4",
            "--model.lora_dropout",
            "0",
            "--model.optimizer",
            "torch.optim.SGD",
            "--model.learning_rate",
            "1.0",
            "--model.warmup_ratio",
            "0",
            "--trainer.max_steps",
            "1",
            "--trainer.precision",
            "32-true",
            "--trainer.gradient_clip_val",
            "null",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.limit_val_batches",
            "0",
            "--samples.samples_per_task",
            "0",
            "--data.tasks",
            "[bool_q, xsum]",
            "--data.max_examples_per_task",
            "16",
            "--data.cache_dir",
            str(root / "cache"),
            "--trainer.default_root_dir",
            str(root),
            *extra,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return load_file(root / "adapter_last" / "adapter_model.safetensors")

    single = fit(tmp_path / "one", "--data.batch_size", "8")
    ddp = fit(
        tmp_path / "ddp",
        "--data.batch_size",
        "4",
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
    )
    b = [k for k in single if "lora_B" in k]
    assert b and all(single[k].abs().max() > 0 for k in b)  # one SGD step moved B = -lr * grad away from 0
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-7)
