"""``export-gguf``: adapters as llama.cpp LoRA GGUF files, read back and compared with the safetensors adapter.

Each tensor is compared twice. Directly: ``lora_a`` is peft's ``lora_A``, and ``lora_b`` is peft's
``lora_B`` after undoing the row move llama.cpp's converter makes on the base (written here from the
layout's definition, not with the exporter's functions). And by what llama.cpp computes: the update
``alpha / rank * lora_b @ lora_a`` it adds to the base GGUF's weight, taken back to the Hugging Face
layout with transformers' own GGUF-loading processors (the inverse of llama.cpp's base conversion),
must be peft's ``get_delta_weight``: the change the adapter makes to the Hugging Face weight.
"""

import json

import numpy as np
import pytest
from conftest import random_adapter, run_cli
from gguf import GGUFReader
from peft import PeftModel
from safetensors.numpy import load_file
from transformers.modeling_gguf_pytorch_utils import BloomTensorProcessor, GPT2TensorProcessor, LlamaTensorProcessor

from lora_lightning.errors import UserInputError
from lora_lightning.export.gguf import GGUFExportError, export_gguf
from lora_lightning.loading import load_causal_lm

ARCH_NAMES = {"gpt2": "gpt2", "gpt_neox": "gptneox", "llama": "llama"}
EXPECTED_MODULES = {  # all-linear on the tiny two-layer models: llama.cpp's tensor names of block 1
    "gpt2": {"attn_qkv", "attn_output", "ffn_up", "ffn_down"},
    "gpt_neox": {"attn_qkv", "attn_output", "ffn_up", "ffn_down"},
    "llama": {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"},
}


def make_adapter(base, folder, seed=0, **lora):
    """A LoRA adapter with random non-zero weights on every linear layer, saved as training saves it."""
    return random_adapter(base, folder, seed, **{"alpha": 8, "target_modules": "all-linear", **lora})


def read_gguf(path):
    reader = GGUFReader(path)
    fields = {}
    for name, field in reader.fields.items():
        value = field.contents()
        fields[name] = value
    # GGUF stores dims innermost first; numpy's shape is the reverse, torch's (out, in) order
    tensors = {t.name: np.array(t.data).reshape(tuple(reversed([int(d) for d in t.shape]))) for t in reader.tensors}
    return fields, tensors


def undo_llama_permute(rows, n_head):
    """Row (head h, pair i, half j) of llama.cpp's layout is row (h, j, i) of Hugging Face's:
    Hugging Face keeps each head's first and second halves apart, llama.cpp interleaves them."""
    head_dim = rows.shape[0] // n_head
    out = np.empty_like(rows)
    for h in range(n_head):
        for i in range(head_dim // 2):
            for j in range(2):
                out[h * head_dim + j * head_dim // 2 + i] = rows[h * head_dim + 2 * i + j]
    return out


def undo_neox_regroup(rows, n_head):
    """llama.cpp's GPT-NeoX rows are [all q; all k; all v]; Hugging Face's are per head [q_h; k_h; v_h]."""
    q, k, v = np.split(rows, 3)
    head_dim = q.shape[0] // n_head
    return np.concatenate([part[h * head_dim : (h + 1) * head_dim] for h in range(n_head) for part in (q, k, v)])


def hf_rows(arch, gguf_name, b, config):
    """lora_b of the GGUF file with the converter's row move undone."""
    if arch == "llama" and ".attn_q." in gguf_name:
        return undo_llama_permute(b, config.num_attention_heads)
    if arch == "llama" and ".attn_k." in gguf_name:
        return undo_llama_permute(b, config.num_key_value_heads)
    if arch == "gpt_neox" and ".attn_qkv." in gguf_name:
        return undo_neox_regroup(b, config.num_attention_heads)
    return b


def to_hf_layout(arch, gguf_name, weight, config):
    """A weight laid out as in the base GGUF, in the Hugging Face model's layout (transformers' GGUF loader)."""
    name = gguf_name.removesuffix(".lora_a")
    if arch == "llama":
        processor = LlamaTensorProcessor(config.to_dict())
        return processor.process(weight, name).weights
    if arch == "gpt2":
        return GPT2TensorProcessor(config.to_dict()).process(weight, name).weights
    if ".attn_qkv." in name:  # llama.cpp's GPT-NeoX layout is BLOOM's, which transformers loads
        return BloomTensorProcessor()._reverse_reshape_weights(weight, config.num_attention_heads, config.hidden_size)
    return weight


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_adapters")
    return {arch: make_adapter(tiny_models[arch], root / arch, seed=i) for i, arch in enumerate(ARCH_NAMES)}


@pytest.mark.parametrize("arch", list(ARCH_NAMES))
def test_every_tensor_and_the_update_llama_cpp_applies_match_the_adapter(arch, adapters, tiny_models, tmp_path):
    out = tmp_path / "adapter.gguf"
    done = export_gguf(adapters[arch], out)
    fields, tensors = read_gguf(out)
    assert fields["general.architecture"] == ARCH_NAMES[arch]
    assert fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == pytest.approx(8.0)
    assert (done.architecture, done.alpha, done.rank) == (ARCH_NAMES[arch], 8.0, 4)

    peft_model = PeftModel.from_pretrained(load_causal_lm(str(tiny_models[arch])), str(adapters[arch]))
    config = peft_model.config
    layers = {name: m for name, m in peft_model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert done.modules == len(layers) == len(tensors) // 2
    assert {n.split(".")[2] for n in tensors if n.startswith("blk.1.")} == EXPECTED_MODULES[arch]
    assert all(t.dtype == np.float32 for t in tensors.values())

    saved = load_file(str(adapters[arch] / "adapter_model.safetensors"))
    matched = 0
    for gguf_name in sorted(n for n in tensors if n.endswith(".lora_a")):
        stem = gguf_name.removesuffix(".lora_a")
        a, b = tensors[gguf_name], tensors[stem + ".lora_b"]
        (module,) = [  # the peft module whose lora_A is this lora_a
            m for m, layer in layers.items() if np.array_equal(layer.lora_A["default"].weight.detach().numpy(), a)
        ]
        key = f"{module}.lora_"  # base_model.model.<Hugging Face name>.lora_
        np.testing.assert_array_equal(a, saved[key + "A.weight"])
        np.testing.assert_array_equal(hf_rows(arch, gguf_name, b, config), saved[key + "B.weight"])
        # What llama.cpp adds to the base GGUF's weight (alpha / rank, rank from the tensor) ...
        update = fields["adapter.lora.alpha"] / b.shape[1] * (b.astype(np.float64) @ a.astype(np.float64))
        # ... is, in the Hugging Face layout, what peft adds to the Hugging Face weight.
        expected = layers[module].get_delta_weight("default").detach().double().numpy()
        np.testing.assert_allclose(to_hf_layout(arch, stem, update, config), expected, rtol=1e-5, atol=1e-6)
        matched += 1
    assert matched == len(layers)


def test_llama_q_and_k_rows_are_permuted_and_v_rows_are_not(adapters, tmp_path):
    """The test above would pass with no permutation if q/k rows happened to be symmetric; here they are not."""
    out = tmp_path / "adapter.gguf"
    export_gguf(adapters["llama"], out)
    _, tensors = read_gguf(out)
    saved = load_file(str(adapters["llama"] / "adapter_model.safetensors"))
    for proj, gguf_name, moved in (("q_proj", "attn_q", True), ("k_proj", "attn_k", True), ("v_proj", "attn_v", False)):
        original = saved[f"base_model.model.model.layers.0.self_attn.{proj}.lora_B.weight"]
        written = tensors[f"blk.0.{gguf_name}.weight.lora_b"]
        assert np.array_equal(written, original) is not moved
        assert sorted(map(tuple, written.tolist())) == sorted(map(tuple, original.tolist()))  # same rows, moved


def test_rslora_alpha_gives_peft_scale(tiny_models, tmp_path):
    adapter = make_adapter(tiny_models["llama"], tmp_path / "rs", r=4, alpha=8, use_rslora=True)
    done = export_gguf(adapter, tmp_path / "rs.gguf")
    fields, _ = read_gguf(tmp_path / "rs.gguf")
    # peft: 8 / sqrt(4) = 4; llama.cpp: alpha / 4, so alpha 16
    assert fields["adapter.lora.alpha"] == pytest.approx(16.0) == done.alpha
    peft_model = PeftModel.from_pretrained(load_causal_lm(str(tiny_models["llama"])), str(adapter))
    q = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(fields["adapter.lora.alpha"] / 4)


def test_cli_writes_default_path_and_refuses_a_foreign_file(adapters, tmp_path):
    adapter = adapters["llama"]
    default = adapter.with_name(adapter.name + ".gguf")
    result = run_cli("export-gguf", "--adapter", str(adapter))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Wrote {default} " in result.stdout
    assert "14 modules, rank 4, alpha 8" in result.stdout  # 7 projections x 2 layers
    first = default.read_bytes()
    assert first[:4] == b"GGUF"
    again = run_cli("export-gguf", "--adapter", str(adapter))  # its own file: replaced without --overwrite
    assert again.returncode == 0, again.stderr[-3000:]
    assert default.read_bytes() == first

    foreign = tmp_path / "mine.gguf"
    foreign.write_bytes(b"user data")
    refused = run_cli("export-gguf", "--adapter", str(adapter), "--output", str(foreign))
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert "exists and lora_lightning did not write it" in refused.stderr and "--overwrite true" in refused.stderr
    assert foreign.read_bytes() == b"user data"
    assert not list(tmp_path.glob(".mine.gguf.tmp-*"))
    forced = run_cli("export-gguf", "--adapter", str(adapter), "--output", str(foreign), "--overwrite", "true")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert foreign.read_bytes() == first


def one_line_refusal(adapter, tmp_path, *words):
    out = tmp_path / "out.gguf"
    with pytest.raises(GGUFExportError) as err:
        export_gguf(adapter, out)
    assert isinstance(err.value, UserInputError) and "\n" not in str(err.value)
    message = str(err.value)
    assert all(w in message for w in words), message
    assert not out.exists() and not list(tmp_path.glob(".out.gguf.tmp-*"))


def test_dora_is_refused(tiny_models, tmp_path):
    adapter = make_adapter(tiny_models["llama"], tmp_path / "dora", use_dora=True)
    one_line_refusal(adapter, tmp_path, "DoRA", "use_dora")
    result = run_cli("export-gguf", "--adapter", str(adapter), "--output", str(tmp_path / "cli.gguf"))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "DoRA" in result.stderr and not (tmp_path / "cli.gguf").exists()


def edited(adapter, tmp_path, **changes):
    """A copy of ``adapter`` with ``changes`` to its adapter_config.json."""
    folder = tmp_path / "edited"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    config = json.loads((adapter / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return folder


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"init_lora_weights": "pissa"}, ("pissa", "residual")),
        ({"init_lora_weights": "olora"}, ("olora",)),
        ({"rank_pattern": {"q_proj": 8}}, ("rank_pattern",)),
        ({"lora_bias": True}, ("lora_bias",)),
        ({"peft_type": "VERA"}, ("VERA",)),
        ({"use_qalora": True}, ("use_qalora",)),
        ({"r": 8}, ("not rank 8",)),
    ],
)
def test_variants_llama_cpp_cannot_apply_are_refused(adapters, tmp_path, changes, words):
    one_line_refusal(edited(adapters["llama"], tmp_path, **changes), tmp_path, *words)


def test_unsupported_architecture_is_refused(adapters, tmp_path):
    from transformers import OPTConfig

    base = tmp_path / "opt"
    OPTConfig(hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=2).save_pretrained(base)
    one_line_refusal(edited(adapters["llama"], tmp_path, base_model_name_or_path=str(base)), tmp_path, "'opt'")


def test_targets_llama_cpp_has_no_lora_tensor_for_are_refused(tiny_models, tmp_path):
    # GPT-2 ties lm_head to the token embedding: llama.cpp's base file has no separate output tensor
    tied = make_adapter(tiny_models["gpt2"], tmp_path / "lm_head", target_modules=["attn.c_attn", "lm_head"])
    one_line_refusal(tied, tmp_path, "lm_head", "tied")
    (tmp_path / "out.gguf").unlink(missing_ok=True)
    with_bias = make_adapter(tiny_models["gpt2"], tmp_path / "bias", bias="all")
    one_line_refusal(with_bias, tmp_path, ".bias", "not a LoRA pair")


def test_pickled_adapters_are_not_loaded(adapters, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "adapter_config.json").write_text((adapters["llama"] / "adapter_config.json").read_text())
    (folder / "adapter_model.bin").write_bytes(b"not unpickled")
    one_line_refusal(folder, tmp_path, "adapter_model.bin", "never loaded")
