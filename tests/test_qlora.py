"""QLoRA (``model.quantization``): a 4-bit base on tiny GPT-2, GPT-NeoX and Llama that trains, exports
a plain LoRA adapter, and loads it on the full-precision base and on a 4-bit base with plain peft."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ARCHS, REPO, run_cli, tiny_fit_args
from safetensors.torch import load_file
from test_compile import assert_compiled_step_equals_eager, two_packed_batches
from test_packing import lora_module

from lora_lightning.errors import UserInputError
from lora_lightning.model import LoRAModule
from lora_lightning.model.building import build_model
from lora_lightning.model.quantization import check_quantization, param_bytes, quantized_summary
from lora_lightning.model.settings import ModelSettings

bnb = pytest.importorskip("bitsandbytes", reason="the [qlora] extra (bitsandbytes) is not installed")

CONFIG = str(REPO / "configs" / "default.yaml")
QLORA = str(REPO / "configs" / "qlora.yaml")


def decoder_linear_shapes(model) -> list[tuple[int, int]]:
    """(out, in) of every linear layer of the full-precision model's decoder blocks (Conv1D transposed)."""
    from transformers.pytorch_utils import Conv1D

    shapes = []
    for name, module in model.named_modules():
        if name.endswith("lm_head"):
            continue
        if isinstance(module, torch.nn.Linear):
            shapes.append(tuple(module.weight.shape))
        elif isinstance(module, Conv1D):
            shapes.append(tuple(module.weight.shape[::-1]))
    return sorted(shapes)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])
def test_the_base_linear_layers_are_really_4bit(tiny_models, arch):
    from transformers import AutoModelForCausalLM

    hp = LoRAModule(model_name=str(tiny_models[arch]), quantization="nf4", lora_r=4).hparams
    model = build_model(ModelSettings.from_hparams(hp), None, "bf16-mixed").model
    full = AutoModelForCausalLM.from_pretrained(tiny_models[arch])
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    shapes = decoder_linear_shapes(full)
    # every linear layer of the blocks (GPT-2's Conv1D too) is a bitsandbytes Linear4bit; the head is not
    assert sorted((m.out_features, m.in_features) for m in quantized) == shapes
    for m in quantized:
        weight = m.weight
        assert type(weight).__name__ == "Params4bit" and weight.dtype == torch.uint8
        assert weight.quant_state.quant_type == "nf4" and weight.quant_state.nested  # double quantization
        assert weight.numel() * 2 == m.out_features * m.in_features  # two weights a byte
        assert m.compute_dtype == torch.bfloat16
    layers, size = quantized_summary(model)
    assert layers == len(shapes) and size == sum(param_bytes(m.weight) for m in quantized)
    assert size < 0.5 * sum(o * i for o, i in shapes) * 2  # under half of the same layers in bfloat16
    # what trains is LoRA alone, in float32; the head and embeddings stay in the base dtype
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert model.get_output_embeddings().weight.dtype == torch.bfloat16


def test_a_quantization_the_run_cannot_have_is_one_line(monkeypatch, tiny_models, tmp_path):
    with pytest.raises(UserInputError, match=r"needs LoRA"):
        check_quantization("nf4", lora=False)
    with pytest.raises(UserInputError, match=r"one of nf4, fp4, int8 or null"):
        check_quantization("nf3", lora=True)
    monkeypatch.delitem(sys.modules, "bitsandbytes")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed
    with pytest.raises(UserInputError, match=r"needs bitsandbytes: pip install 'lora-lightning\[qlora\]'"):
        check_quantization("nf4", lora=True)
    done = run_cli(
        "fit",
        "--config",
        CONFIG,
        "--config",
        QLORA,
        "--model.model_name",
        str(tiny_models["llama"]),
        "--model.lora",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
    )
    assert done.returncode == 2 and not (tmp_path / "run").exists()
    assert done.stderr.strip().splitlines()[-1].startswith("lora-lightning: error: model.quantization nf4 needs LoRA")


@pytest.mark.parametrize("arch", ARCHS)
def test_a_compiled_block_over_a_4bit_base_equals_the_eager_block(arch, tiny_models, examples, dynamo_on):
    """bitsandbytes' 4-bit matmuls are torch operators dynamo traces (no graph break): a compiled
    training step over an NF4 base gives the eager step's loss and LoRA gradients. (The old code
    refused model.compile with a quantized base.)"""
    module = lora_module(tiny_models[arch], quantization="nf4")  # 4-bit weights, float32 compute
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in module.model.modules()) > 0
    assert_compiled_step_equals_eager(module, two_packed_batches(examples), dynamo_on, 1e-4, (1e-3, 1e-5))
    assert not dynamo_on["graph_break"]  # traced whole, the 4-bit matmuls included


def test_the_qlora_overlay_fit_runs_compiled(tiny_models, tmp_path, monkeypatch):
    """``fit --config configs/default.yaml --config configs/qlora.yaml`` as a user runs it, compiling
    on: the blocks over the 4-bit base compile, train, and the adapter exports."""
    monkeypatch.delenv("TORCH_COMPILE_DISABLE")
    root = tmp_path / "run"
    keys = {"trainer.max_epochs": 1, "data.batch_size": 4, "data.max_examples_per_task": 8}
    done = run_cli(
        *tiny_fit_args(tiny_models["llama"], root, keys, overlays=("qlora.yaml",)),
        fresh=True,  # dynamo reads TORCH_COMPILE_DISABLE at import
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "base linear layers in nf4" in out and "model.compile: 2 decoder blocks compiled for training" in out
    weights = load_file(root / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # the compiled steps trained it


def mapped_ranges(path) -> list[tuple[int, int]]:
    """The address ranges where this process maps ``path`` (Linux's /proc/self/maps)."""
    ranges = []
    for line in open("/proc/self/maps"):
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].strip() == str(path):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_quantized_base_lets_go_of_its_checkpoint_file(tiny_models, tmp_path):
    """transformers leaves the weights it does not quantize as views of the checkpoint's memory map, which
    kept every page of the full-precision file resident beside the 4-bit copy (1.5 GB for a GPT-2 large
    shaped base). After loading, no weight points into the file and the file is no longer mapped."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "bf16"  # a checkpoint in the dtype it loads in: its weights are not converted (copied)
    AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.bfloat16).save_pretrained(folder)
    checkpoint = (folder / "model.safetensors").resolve()
    module = LoRAModule(model_name=str(folder), quantization="nf4", lora_r=4)
    model = build_model(module.settings, None, "bf16-mixed").model
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    ranges = mapped_ranges(checkpoint)
    inside = [n for n, p in model.named_parameters() if any(a <= p.data_ptr() < b for a, b in ranges)]
    assert inside == [] and ranges == []


def test_bitsandbytes_is_imported_without_fetching_hub_kernels():
    """bitsandbytes' import on an AVX-512 BF16 CPU asks the ``kernels`` package for a Hub kernel; a
    ``kernels`` that is installed (transformers >= 5.25 requires it) is not asked when lora_lightning
    (and so peft and transformers) is imported, and stays importable. Its ``get_kernel`` is replaced by
    a recorder; without the package, a stand-in module plays it."""
    code = (
        "import importlib.machinery, sys, types\n"
        "calls = []\n"
        "try:\n"
        "    import kernels\n"
        "except ImportError:\n"
        "    kernels = types.ModuleType('kernels')\n"
        "    kernels.__spec__ = importlib.machinery.ModuleSpec('kernels', None)\n"
        "    sys.modules['kernels'] = kernels\n"
        "kernels.get_kernel = lambda *a, **k: calls.append(a)\n"
        "import lora_lightning\n"
        "assert 'bitsandbytes' in sys.modules and 'peft' in sys.modules\n"
        "assert sys.modules['kernels'] is kernels, 'kernels not restored'\n"
        "print('calls', len(calls))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "calls 0" and "kernels-community" not in done.stderr


def qlora_fit(model, root, *extra):
    keys = {
        "model.lora_dropout": 0,
        "model.learning_rate": 0.01,
        "trainer.max_epochs": 2,
        "data.max_examples_per_task": 12,
        "data.max_val_examples_per_task": 6,
        "data.batch_size": 4,
        "samples.samples_per_task": 0,
    }
    return run_cli(*tiny_fit_args(model, root, keys, *extra, overlays=("qlora.yaml",)))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])
def test_a_quantized_fit_trains_and_exports_a_plain_lora_adapter(tiny_models, tmp_path, arch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    root = tmp_path / "run"
    done = qlora_fit(tiny_models[arch], root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "base linear layers in nf4" in done.stderr
    adapter = root / "adapter"
    history = json.loads((adapter / "training_history.json").read_text())
    assert history["base_quantization"] == "nf4"
    assert history["best_val_loss"] < history["val_loss"][0][1] - 0.05  # it learns
    assert "4-bit NF4 with double quantization" in (adapter / "README.md").read_text()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(tiny_models[arch])

    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    bare = AutoModelForCausalLM.from_pretrained(tiny_models[arch]).eval()
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models[arch]), str(adapter)).eval()
    four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
    base_4bit = AutoModelForCausalLM.from_pretrained(tiny_models[arch], quantization_config=four_bit)
    quantized = PeftModel.from_pretrained(base_4bit, str(adapter)).eval()
    with torch.no_grad():
        b, p, q = bare(input_ids=ids).logits, plain(input_ids=ids).logits, quantized(input_ids=ids).logits
        with quantized.disable_adapter():
            q_base = quantized(input_ids=ids).logits
    # on the full-precision base (where it is served) and on a 4-bit base it changes the outputs ...
    assert (p - b).abs().max() > 1e-2 and (q - q_base).abs().max() > 1e-2
    # ... by about the same: the 4-bit base differs from full precision by its rounding only
    assert torch.nn.functional.cosine_similarity((p - b).flatten(), (q - q_base).flatten(), dim=0) > 0.8


@pytest.mark.slow
def test_merge_of_a_4bit_trained_adapter_goes_into_the_full_precision_base(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    root = tmp_path / "run"
    assert qlora_fit(tiny_models["llama"], root, "--trainer.max_epochs", "1").returncode == 0
    out = tmp_path / "merged"
    done = run_cli("merge", "--adapter", str(root / "adapter"), "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained on a nf4 base; it was merged into the full-precision base weights" in done.stdout
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert getattr(merged.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in merged.parameters())
