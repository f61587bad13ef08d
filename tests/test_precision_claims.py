"""``trainer.precision bf16-true``: the frozen base computes in bfloat16, the adapter stays float32.

Lightning's bf16-true converts the whole LightningModule with ``.to(bfloat16)`` and makes bfloat16
the default dtype inside each training step; the docs say the LoRA weights, their AdamW state and
the exported adapter stay float32, and the step's token count is exact.
"""

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from safetensors.torch import load_file

from lora_lightning import AdapterCheckpoint, FlanDataModule, LoRAModule
from lora_lightning.data.tokenization import IGNORE_INDEX


class Dtypes(Callback):
    """The dtypes of what trains, of the frozen base and of the AdamW state, and each step's tokens."""

    def __init__(self):
        self.tokens: list[int] = []
        self.logged: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.tokens.append(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.logged.append(float(trainer.callback_metrics["train/step_tokens"]))

    def on_train_end(self, trainer, pl_module):
        params = list(pl_module.model.named_parameters())
        self.trainable = {p.dtype for _, p in params if p.requires_grad}
        self.frozen = {p.dtype for _, p in params if not p.requires_grad}
        state = trainer.optimizers[0].state.values()
        self.exp_avg = {s["exp_avg"].dtype for s in state} | {s["exp_avg_sq"].dtype for s in state}
        self.lora_b_moved = all(bool(p.abs().max() > 0) for n, p in params if "lora_B" in n)


def test_bf16_true_keeps_the_adapter_and_its_optimizer_state_float32(tiny_models, tmp_path):
    seed_everything(0)
    data = FlanDataModule(
        tasks=["xsum"],
        max_examples_per_task=8,
        batch_size=4,
        max_length=256,
        tokenizer=str(tiny_models["llama"]),
        cache_dir=None,
    )
    module = LoRAModule(model_name=str(tiny_models["llama"]), lora_r=4, learning_rate=1e-2)
    dtypes = Dtypes()
    trainer = Trainer(
        max_steps=2,
        precision="bf16-true",
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[dtypes, AdapterCheckpoint(dirpath=str(tmp_path))],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)

    assert dtypes.frozen == {torch.bfloat16}  # the base computes in bfloat16
    assert dtypes.trainable == {torch.float32}  # the LoRA weights ...
    assert dtypes.exp_avg == {torch.float32}  # ... and their AdamW state
    assert dtypes.lora_b_moved  # trained: B started at zero
    exported = load_file(tmp_path / "adapter_last" / "adapter_model.safetensors")
    assert exported and {t.dtype for t in exported.values()} == {torch.float32}
    # the step's token count is exact though bfloat16 is the default dtype inside the step
    assert any(torch.tensor(float(n), dtype=torch.bfloat16).item() != n for n in dtypes.tokens)
    assert dtypes.logged == dtypes.tokens
