"""How far apart are the gradients of one global batch split three ways? (``python benchmarks/accumulation_check.py``)

One optimizer step of the default run (embedded SmolLM2-135M-Instruct, demo mix, LoRA r16 on
q,v), fp32, dropout 0, with batch 8 x 1, 4 x 2 and 2 x 4: the same 8 examples. Prints, per split,
the share of lora_B gradient entries whose sign differs from the 8 x 1 gradient (what AdamW's first
step follows) and the norm of the difference relative to that of the 8 x 1 gradient.
``--per-micro-batch-mean`` reproduces the old normalisation (each micro-batch's own mean,
averaged) for comparison.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lora_lightning import FlanDataModule, LoRAModule  # noqa: E402
from lora_lightning.model import step_loss  # noqa: E402


class Capture(Callback):
    grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters() if "lora_B" in n}


def gradients(batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
    seed_everything(42)
    data = FlanDataModule(batch_size=batch_size, max_length=384, cache_dir=None)
    module = LoRAModule(lora_dropout=0.0, learning_rate=1e-3, warmup_ratio=0.1, lr_schedule="cosine")
    capture = Capture()
    Trainer(
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
    ).fit(module, datamodule=data)
    return capture.grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-micro-batch-mean", action="store_true", help="the old normalisation")
    args = parser.parse_args()
    if args.per_micro_batch_mean:
        original = step_loss.StepLoss.scaled

        def old(self, loss_sum, count, batch, batch_idx):
            return original(self, loss_sum, count, {k: v for k, v in batch.items() if k != "step_tokens"}, batch_idx)

        step_loss.StepLoss.scaled = old
    reference = gradients(8, 1)
    print(f"normalisation: {'per-micro-batch mean (old)' if args.per_micro_batch_mean else 'per step tokens'}")
    for batch_size, accumulate in ((4, 2), (2, 4)):
        grads = gradients(batch_size, accumulate)
        flipped = sum(int((torch.sign(grads[n]) != torch.sign(reference[n])).sum()) for n in reference)
        total = sum(reference[n].numel() for n in reference)
        diff = sum(float((grads[n] - reference[n]).pow(2).sum()) for n in reference) ** 0.5
        norm = sum(float(reference[n].pow(2).sum()) for n in reference) ** 0.5
        print(
            f"{batch_size} x {accumulate} vs 8 x 1: {flipped} of {total} lora_B gradient entries have another sign "
            f"({100 * flipped / total:.2f}%); |difference| / |gradient| = {diff / norm:.2e}"
        )


if __name__ == "__main__":
    main()
