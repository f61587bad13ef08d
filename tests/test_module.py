"""LoRAModule through the Python API with a plain lightning.Trainer: full fine-tuning, accumulation, options."""

import json

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from lora_lightning import AdapterCheckpoint, FlanDataModule, LoRAModule
from lora_lightning.errors import UserInputError


def train(tiny_models, tmp_path, arch="gpt_neox", accumulate=1, **module_kwargs):
    data = FlanDataModule(
        tokenizer=str(tiny_models[arch]),
        max_examples_per_task=8,
        max_val_examples_per_task=4,
        batch_size=4,
        cache_dir=None,
    )
    module = LoRAModule(model_name=str(tiny_models[arch]), lora_r=4, **module_kwargs)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=1.0,
        callbacks=[AdapterCheckpoint(dirpath=str(tmp_path))],
    )
    trainer.fit(module, datamodule=data)
    return trainer, module


def test_full_fine_tuning_trains_every_weight_and_exports_a_model_folder(tiny_models, tmp_path):
    before = AutoModelForCausalLM.from_pretrained(tiny_models["gpt_neox"]).state_dict()
    trainer, module = train(tiny_models, tmp_path, lora=False)
    assert all(p.requires_grad for p in module.model.parameters())
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model_last")  # plain transformers, no peft
    after = exported.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    assert not (tmp_path / "adapter").exists()


def test_gradient_accumulation_halves_the_optimizer_steps(tiny_models, tmp_path):
    trainer, _ = train(tiny_models, tmp_path / "a", accumulate=1)
    trainer2, _ = train(tiny_models, tmp_path / "b", accumulate=2)
    assert trainer.global_step == 6  # 24 examples / batch 4
    assert trainer2.global_step == 3
    history = json.loads((tmp_path / "b" / "adapter_last" / "training_history.json").read_text())
    assert history["global_step"] == 3


@pytest.mark.parametrize("option", ["use_rslora", "use_dora"])
def test_rslora_and_dora_reach_peft(tiny_models, tmp_path, option):
    _, module = train(tiny_models, tmp_path, arch="llama", **{option: True})
    config = json.loads((tmp_path / "adapter_last" / "adapter_config.json").read_text())
    assert config[option] is True
    if option == "use_dora":
        assert any("lora_magnitude_vector" in n for n, _ in module.model.named_parameters())


def test_settings_are_checked_before_any_model_is_loaded():
    with pytest.raises(UserInputError, match="lora_r must be a positive integer"):
        LoRAModule(model_name="/does/not/matter", lora_r=0)
    with pytest.raises(UserInputError, match="warmup_ratio"):
        LoRAModule(warmup_ratio=1.5)
    LoRAModule(lora=False, lora_r=0)  # LoRA settings do not apply to full fine-tuning
