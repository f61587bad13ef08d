"""The frozen base in half precision: bf16 base weights, float32 adapter, optimizer state and export.

``model.base_dtype auto`` loads the base in bfloat16 under ``bf16-mixed`` with LoRA; what trains stays
float32 (peft's ``autocast_adapter_dtype``), so do its AdamW moments and the exported adapter, which
plain peft loads onto a float32 base. The loss stays within a small tolerance of the float32 base's.
"""

import lightning as L
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lora_lightning import AdapterCheckpoint, FlanDataModule, LoRAModule
from lora_lightning.errors import UserInputError
from lora_lightning.model.building import resolve_base_dtype

STEPS = 4


class StepLosses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def train(model_dir, root, precision="bf16-mixed", **module_kwargs):
    L.seed_everything(0)  # the same LoRA initialisation, dropout masks and batches in every run
    data = FlanDataModule(
        tokenizer=str(model_dir), max_examples_per_task=16, max_val_examples_per_task=4, batch_size=4, cache_dir=None
    )
    module = LoRAModule(model_name=str(model_dir), lora_r=4, learning_rate=1e-3, **module_kwargs)
    losses = StepLosses()
    trainer = L.Trainer(
        default_root_dir=root,
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[AdapterCheckpoint(dirpath=str(root)), losses],
    )
    trainer.fit(module, datamodule=data)
    return trainer, module, losses.losses


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def runs(request, tiny_models, tmp_path_factory):
    """The same short LoRA run with the default (auto: bf16) base and with a float32 base."""
    root = tmp_path_factory.mktemp(f"half_base_{request.param}")
    half = train(tiny_models[request.param], root / "half")
    full = train(tiny_models[request.param], root / "fp32", base_dtype="float32")
    return {"arch": request.param, "base": tiny_models[request.param], "root": root, "half": half, "fp32": full}


def test_base_is_bf16_and_what_trains_is_fp32(runs):
    _, module, _ = runs["half"]
    params = dict(module.model.named_parameters())
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    frozen = {n: p for n, p in params.items() if not p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    assert {p.dtype for p in frozen.values()} == {torch.bfloat16}
    _, module32, _ = runs["fp32"]
    assert {p.dtype for p in module32.model.parameters()} == {torch.float32}


def test_optimizer_state_is_fp32(runs):
    trainer, module, _ = runs["half"]
    state = trainer.optimizers[0].state
    moments = [v for s in state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
    trained = [p for p in module.model.parameters() if p.requires_grad]
    assert len(state) == len(trained) and len(moments) == 2 * len(trained)
    assert {m.dtype for m in moments} == {torch.float32}


def test_exported_adapter_is_fp32_peft_format_and_loads_with_plain_peft(runs):
    _, module, _ = runs["half"]
    folder = runs["root"] / "half" / "adapter_last"
    weights = load_file(folder / "adapter_model.safetensors")
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
    assert {w.dtype for w in weights.values()} == {torch.float32}
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # trained, not the zero init
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(runs["base"]), str(folder))
    loaded = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    trained = {n: p for n, p in module.model.named_parameters() if "lora_" in n}
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[n], trained[n].detach()) for n in loaded)


def test_loss_stays_close_to_the_fp32_base(runs):
    half, fp32 = runs["half"][2], runs["fp32"][2]
    assert len(half) == len(fp32) == STEPS
    assert half[0] == pytest.approx(fp32[0], abs=0.005)  # the same batch and model before any update
    assert max(abs(a - b) for a, b in zip(half, fp32)) < 0.01  # and at every step after (measured: < 0.0005)
    assert half != fp32  # the base really ran in another dtype


def test_trained_base_biases_are_fp32_and_norms_with_them(tiny_models, tmp_path):
    """``lora_bias all`` trains every bias of the bf16 base: those go float32, and a LayerNorm whose
    bias trains goes float32 whole (it takes a bf16 input only with weight and bias of one dtype)."""
    _, module, losses = train(tiny_models["gpt2"], tmp_path, lora_bias="all")
    assert len(losses) == STEPS
    named = dict(module.model.named_modules())
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert any(n.endswith("ln_1.bias") for n in trainable) and any(
        n.endswith("c_attn.base_layer.bias") for n in trainable
    )
    assert {p.dtype for p in module.model.parameters() if p.requires_grad} == {torch.float32}
    for name, m in named.items():
        if name.endswith("ln_1"):
            assert m.weight.dtype == m.bias.dtype == torch.float32
        if name.endswith("c_attn.base_layer"):
            assert m.weight.dtype == torch.bfloat16 and m.bias.dtype == torch.float32
    weights = load_file(tmp_path / "adapter_last" / "adapter_model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}


@pytest.mark.parametrize(
    "base_dtype, lora, precision, expected",
    [
        ("auto", True, "bf16-mixed", "bfloat16"),
        ("auto", True, "bf16-true", "bfloat16"),
        ("auto", True, "16-mixed", "float16"),
        ("auto", True, "32-true", "float32"),
        ("auto", True, None, "float32"),
        ("auto", False, "bf16-mixed", "float32"),  # full fine-tuning: every weight trains, in float32
        ("float32", True, "bf16-mixed", "float32"),
        ("bfloat16", True, "32-true", "bfloat16"),
        ("float16", True, "16-mixed", "float16"),
    ],
)
def test_auto_follows_the_trainer_precision(base_dtype, lora, precision, expected):
    assert resolve_base_dtype(base_dtype, lora, precision) == expected


def test_half_base_without_lora_is_refused():
    with pytest.raises(UserInputError, match="model.base_dtype bfloat16 needs LoRA"):
        resolve_base_dtype("bfloat16", False, "bf16-mixed")
    with pytest.raises(UserInputError, match="model.base_dtype must be one of"):
        resolve_base_dtype("int8", True, "bf16-mixed")
