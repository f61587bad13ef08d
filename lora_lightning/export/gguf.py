"""Exporting an adapter as a llama.cpp LoRA GGUF (``lora-lightning export-gguf``), for llama.cpp and Ollama.

The file is what llama.cpp's own ``convert_lora_to_gguf.py`` writes, so ``llama-cli --lora``,
``llama-server --lora`` and an Ollama ``ADAPTER`` line load it onto the base model's GGUF:

- metadata ``general.architecture`` (the base's llama.cpp architecture, which llama.cpp requires to
  match the base file's), ``general.type = "adapter"``, ``adapter.type = "lora"`` and
  ``adapter.lora.alpha``;
- for each adapted module two float32 tensors named after the base tensor llama.cpp gives that
  module, ``blk.N.attn_q.weight.lora_a`` (peft's ``lora_A``, rank x in) and ``...lora_b`` (peft's
  ``lora_B``, out x rank). The names come from the ``gguf`` package's own map of Hugging Face names
  (:func:`gguf.get_tensor_name_map`), the one the converters use.

llama.cpp computes ``W x + (alpha / rank) * lora_b (lora_a x)`` on the weights of the base GGUF, which
the converter laid out differently from the Hugging Face model for some architectures; the adapter
must be laid out the same way, so ``lora_b``'s rows (the output side) are moved as the base's were:

- Llama (SmolLM2, the default model): ``q_proj`` and ``k_proj`` rows are permuted per head, as
  ``convert_hf_to_gguf``'s ``LlamaModel.permute`` permutes the base weights for llama.cpp's RoPE;
- GPT-NeoX (Pythia): the fused ``query_key_value`` rows go from per-head ``[q k v]`` blocks to
  ``[all q, all k, all v]``, as ``GPTNeoXModel.modify_tensors`` moves the base's;
- GPT-2: nothing moves. Its Conv1D weights are stored ``in x out`` and the converter transposes the
  base ones, but peft's ``lora_A``/``lora_B`` are already ``rank x in`` / ``out x rank`` for Conv1D
  too, i.e. in the layout llama.cpp's transposed base weights have. (``convert_lora_to_gguf.py``
  reuses the base converter's transpose here, giving tensors llama.cpp refuses for their shape.)

peft scales an adapter by ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA); llama.cpp by
``alpha / rank`` with the file's alpha, so the alpha written is the one that gives peft's scale
(``lora_alpha * sqrt(r)`` with rsLoRA). What llama.cpp cannot apply is refused, one line each,
before anything is written: an architecture not listed in :data:`ARCHITECTURES`, a module with no
llama.cpp tensor (token embeddings, a tied ``lm_head``), DoRA, LoRA bias, residual initialisations
(PiSSA, OLoRA: their adapter is an update to a changed base), per-module ranks or alphas, trained
weights beside the LoRA pairs (``modules_to_save``, biases), and adapters saved only with pickle
(``adapter_model.bin``: never unpickled here).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from lora_lightning.atomic_write import atomic_file, check_writable_file
from lora_lightning.errors import UserInputError, first_line
from lora_lightning.loading import DEFAULT_BASE_CACHE, resolve_model_path
from lora_lightning.model.adapters import adapter_base

WEIGHTS = "adapter_model.safetensors"
LORA_SUFFIX = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
RESIDUAL_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
"""``init_lora_weights`` values (and their prefixes) that change the base weights the adapter was trained on."""
VARIANT_KEYS = (
    "use_qalora",  # pooled inputs to lora_A
    "use_bdlora",
    "velora_config",
    "kasa_config",
    "monteclora_config",
    "arrow_config",  # routing between adapters
    "target_parameters",  # LoRA on raw parameters (MoE experts), not on layers
    "layer_replication",  # a base with repeated layers
    "alora_invocation_tokens",  # activated LoRA: llama.cpp has it, export-gguf does not write it
    "trainable_token_indices",
)
"""``adapter_config.json`` keys that, when set, make the adapter something other than ``W + scale * B A``
on each adapted layer (peft 0.21's names)."""


class GGUFExportError(UserInputError):
    """An adapter llama.cpp cannot apply as it is, or an output that would be overwritten."""


def permute_llama_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """``convert_hf_to_gguf``'s ``LlamaModel.permute`` on the rows (first axis) of ``rows``: within each
    of ``n_head`` heads the two halves of the head dimension are interleaved (Hugging Face's rotate-half
    RoPE layout to llama.cpp's pairwise one)."""
    head_dim = rows.shape[0] // n_head // 2
    return rows.reshape(n_head, 2, head_dim, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def regroup_neox_qkv(rows: np.ndarray, n_head: int) -> np.ndarray:
    """``GPTNeoXModel.modify_tensors`` on the rows of a fused ``query_key_value``: from per-head
    ``[q k v]`` blocks to all query rows, then all key rows, then all value rows."""
    per_head = rows.reshape(n_head, 3, rows.shape[0] // n_head // 3, *rows.shape[1:])
    return np.concatenate([per_head[:, i].reshape(-1, *rows.shape[1:]) for i in range(3)])


def llama_rows(kind: gguf.MODEL_TENSOR, rows: np.ndarray, config: Any) -> np.ndarray:
    n_head = config.num_attention_heads
    if kind == gguf.MODEL_TENSOR.ATTN_Q:
        return permute_llama_rows(rows, n_head)
    if kind == gguf.MODEL_TENSOR.ATTN_K:
        return permute_llama_rows(rows, getattr(config, "num_key_value_heads", None) or n_head)
    return rows


def neox_rows(kind: gguf.MODEL_TENSOR, rows: np.ndarray, config: Any) -> np.ndarray:
    return regroup_neox_qkv(rows, config.num_attention_heads) if kind == gguf.MODEL_TENSOR.ATTN_QKV else rows


def same_rows(kind: gguf.MODEL_TENSOR, rows: np.ndarray, config: Any) -> np.ndarray:
    return rows


ARCHITECTURES: dict[str, tuple[str, Callable[[gguf.MODEL_TENSOR, np.ndarray, Any], np.ndarray]]] = {
    # Hugging Face model_type: (llama.cpp architecture, how lora_B's rows move as the base's did)
    "llama": ("LLAMA", llama_rows),
    "gpt2": ("GPT2", same_rows),
    "gpt_neox": ("GPTNEOX", neox_rows),
}


@dataclass
class GGUFExport:
    """What :func:`export_gguf` wrote."""

    path: Path
    architecture: str
    alpha: float
    rank: int
    modules: int


def default_output(adapter: str | Path) -> Path:
    """``<adapter folder>.gguf`` beside the folder: ``checkpoints/default/adapter`` gives
    ``checkpoints/default/adapter.gguf`` (not inside it: a later export of the folder replaces it whole)."""
    folder = Path(adapter).resolve()
    return folder.with_name(folder.name + ".gguf")


def read_adapter(adapter: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The adapter's ``adapter_config.json`` and its tensors as float32 arrays, read with safetensors."""
    folder = Path(adapter)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise GGUFExportError(
            f"{str(adapter)!r} is not an adapter folder (no adapter_config.json); give the adapter/ folder a LoRA run "
            "wrote (a full fine-tune's model/ folder converts with llama.cpp's convert_hf_to_gguf.py instead)"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise GGUFExportError(f"{config_file} is not readable JSON: {first_line(err)}") from None
    weights = folder / WEIGHTS
    if not weights.is_file():
        pickled = (
            " (only adapter_model.bin, a pickle, which is never loaded here)"
            if (folder / "adapter_model.bin").is_file()
            else ""
        )
        raise GGUFExportError(
            f"{str(adapter)!r} has no {WEIGHTS}{pickled}; "
            "re-save the adapter with save_pretrained(safe_serialization=True)"
        )
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            tensors = {name: f.get_tensor(name).float().numpy() for name in f.keys()}  # noqa: SIM118
    except Exception as err:  # a truncated or foreign file: safetensors' own message says which
        raise GGUFExportError(f"{weights} cannot be read as safetensors: {first_line(err)}") from None
    return config, tensors


def check_variant(config: dict) -> None:
    """Refuses adapters whose effect is not ``W + scale * B A`` on the unchanged base weights."""
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise GGUFExportError(f"the adapter is peft {peft_type}, not LoRA; llama.cpp's GGUF adapters are LoRA only")
    if config.get("use_dora"):
        raise GGUFExportError(
            "the adapter uses DoRA (use_dora), whose magnitude vectors llama.cpp cannot apply; "
            "train without use_dora, or merge it (lora-lightning merge) and convert the merged model"
        )
    if config.get("lora_bias"):
        raise GGUFExportError("the adapter has a LoRA bias (lora_bias), which llama.cpp cannot apply; train without it")
    init = str(config.get("init_lora_weights", True)).lower()
    if init.startswith(RESIDUAL_INITS):
        raise GGUFExportError(
            f"the adapter was initialised with {init} and is an update to a changed (residual) base, not to the "
            "base GGUF llama.cpp loads; merge it (lora-lightning merge) and convert the merged model instead"
        )
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise GGUFExportError(
            "the adapter sets per-module ranks or alphas (rank_pattern/alpha_pattern); a llama.cpp LoRA file has "
            "one alpha for all modules, so retrain with one lora_r and lora_alpha"
        )
    for key in VARIANT_KEYS:
        if config.get(key):
            raise GGUFExportError(
                f"the adapter sets {key}, a LoRA variant or extra that llama.cpp's plain LoRA cannot apply; "
                "train without it, or merge it (lora-lightning merge) and convert the merged model"
            )


def gguf_alpha(config: dict) -> float:
    """The ``adapter.lora.alpha`` that makes llama.cpp's scale ``alpha / r`` equal peft's:
    ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA."""
    alpha, rank = float(config.get("lora_alpha", 8)), int(config.get("r", 8))
    if alpha <= 0:
        raise GGUFExportError(f"lora_alpha is {alpha:g}; llama.cpp reads alpha 0 as scale 1, so it cannot be written")
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


def base_config(adapter: str | Path, base: str | None, base_cache_dir: str) -> tuple[str, Any]:
    """The base model's path and Transformers config (only the config is read, no weights)."""
    from transformers import AutoConfig

    path = resolve_model_path(base or adapter_base(adapter), base_cache_dir)
    try:
        return path, AutoConfig.from_pretrained(path)
    except Exception as err:  # offline without the Hub id cached, a broken config.json
        raise GGUFExportError(
            f"cannot read the base model's config from {path!r}: {first_line(err)}; "
            "pass --base with a local model folder"
        ) from None


def lora_pairs(tensors: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Module name (``model.layers.0.self_attn.q_proj``) -> ``{"A": lora_A, "B": lora_B}``."""
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, array in tensors.items():
        if name.endswith(".base_layer.weight"):  # the base's own weight, saved by peft beside a tied lm_head
            continue  # (convert_lora_to_gguf.py skips it too); the LoRA pair next to it is judged below
        match = LORA_SUFFIX.match(name)
        if match is None:
            what = "DoRA magnitude" if "lora_magnitude_vector" in name else "a trained weight that is not a LoRA pair"
            if "lora_embedding_" in name:
                what = "an embedding LoRA"
            raise GGUFExportError(
                f"the adapter holds {name} ({what}), which a llama.cpp LoRA file cannot carry; "
                "train with only linear target modules and no modules_to_save or bias"
            )
        pairs.setdefault(match["module"], {})[match["part"]] = array
    missing = sorted(m for m, p in pairs.items() if len(p) != 2)
    if missing:
        raise GGUFExportError(
            f"the adapter has lora_A without lora_B (or the reverse) for {missing[0]}; it is incomplete"
        )
    if not pairs:
        raise GGUFExportError("the adapter holds no LoRA weights")
    return pairs


def gguf_tensors(pairs: dict[str, dict[str, np.ndarray]], config: Any, rank: int) -> dict[str, np.ndarray]:
    """The tensors of the GGUF file, by llama.cpp name, with ``lora_b`` rows moved as the base's were."""
    model_type = config.model_type
    arch_key, move_rows = ARCHITECTURES[model_type]
    arch = gguf.MODEL_ARCH[arch_key]
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    allowed = set(gguf.MODEL_TENSORS[arch])
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out: dict[str, np.ndarray] = {}
    for module in sorted(pairs, key=natural_key):
        a, b = pairs[module]["A"], pairs[module]["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise GGUFExportError(
                f"{module}: lora_A {list(a.shape)} and lora_B {list(b.shape)} are not rank {rank} as "
                "adapter_config.json says; the adapter is corrupt or edited"
            )
        kind = names.get_type(module)
        target = names.get_name(module)
        if kind is None or target is None or kind not in allowed:
            raise GGUFExportError(
                f"target module {module} has no tensor in llama.cpp's {gguf.MODEL_ARCH_NAMES[arch]} architecture; "
                "train with target_modules it has (the attention and MLP projections)"
            )
        if kind == gguf.MODEL_TENSOR.TOKEN_EMBD or (kind == gguf.MODEL_TENSOR.OUTPUT and tied):
            raise GGUFExportError(
                f"target module {module} is the {'tied ' if tied else ''}token embedding, which export-gguf does not "
                "convert; train with target_modules without it (all-linear leaves it out)"
            )
        out[f"{target}.weight.lora_a"] = np.ascontiguousarray(a, dtype=np.float32)
        out[f"{target}.weight.lora_b"] = np.ascontiguousarray(move_rows(kind, b, config), dtype=np.float32)
    return out


def natural_key(name: str) -> list:
    """``layers.2`` before ``layers.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def export_gguf(
    adapter: str | Path,
    output: str | Path | None = None,
    base: str | None = None,
    overwrite: bool = False,
    base_cache_dir: str = DEFAULT_BASE_CACHE,
) -> GGUFExport:
    """Writes ``adapter`` as a llama.cpp LoRA GGUF at ``output`` (default :func:`default_output`).

    Everything is checked before the file is written, and it is written whole or not at all
    (:func:`~lora_lightning.atomic_write.atomic_file`); an existing file lora_lightning did not write
    is refused unless ``overwrite``. ``base`` (default: the adapter's base) gives only the config:
    the architecture, head counts and layer count."""
    target = Path(output) if output is not None else default_output(adapter)
    check_writable_file(target, overwrite, "--overwrite true")
    config, tensors = read_adapter(adapter)
    check_variant(config)
    alpha, rank = gguf_alpha(config), int(config.get("r", 8))
    base_path, model_config = base_config(adapter, base, base_cache_dir)
    if model_config.model_type not in ARCHITECTURES:
        raise GGUFExportError(
            f"export-gguf does not support model type {model_config.model_type!r}; it converts "
            f"{', '.join(ARCHITECTURES)} adapters (others: merge, then llama.cpp's convert_hf_to_gguf.py)"
        )
    arrays = gguf_tensors(lora_pairs(tensors), model_config, rank)
    arch_name = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[ARCHITECTURES[model_config.model_type][0]]]
    writer = gguf.GGUFWriter(None, arch_name)  # writes general.architecture
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(f"{Path(base_path).name} LoRA")
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, array in arrays.items():
        writer.add_tensor(name, array)
    with atomic_file(target, "wb", fsync=True, record=True) as f:
        # GGUFWriter opens its own handle; it writes the temporary file atomic_file then fsyncs and renames.
        writer.write_header_to_file(Path(f.name))
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return GGUFExport(target, arch_name, alpha, rank, len(arrays) // 2)
