"""Shared fixtures: a tiny byte-level BPE tokenizer and tiny random GPT-2, GPT-NeoX and Llama models.

Everything is built from configs on the spot (no downloads): the tokenizer is trained on a few
hundred sentences in well under a second, the models have two layers of width 64.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cli_zygote import Zygote

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N workers share the cores, one thread each
    os.environ["OMP_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The CPU's peak for MFU is measured once and cached (model.flops.cpu_peak_flops): in a folder of the
# suite's own, shared by its workers, not the user's ~/.cache.
os.environ["LORA_LIGHTNING_CACHE"] = str(Path(tempfile.gettempdir()) / "lora_lightning_test_cache")
# configs/default.yaml compiles the decoder blocks; on tiny models compiling costs more than it saves,
# so tests run eager unless they turn dynamo back on (test_compile.py does, and checks compiled = eager).
os.environ["TORCH_COMPILE_DISABLE"] = "1"
if "torch._dynamo" in sys.modules:  # imported before this file (a plugin): its config has read the variable
    sys.modules["torch._dynamo"].config.disable = True

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO = REPO / "lora_lightning" / "data" / "demo"
EOS = "<|endoftext|>"
ARCHS = ("gpt2", "gpt_neox", "llama")
ZYGOTE = Zygote()


@pytest.fixture(scope="session", autouse=True)
def _close_zygote():
    yield
    ZYGOTE.close()


def corpus() -> list[str]:
    """Text to train the tiny tokenizer on: the demo data and the task templates."""
    lines = []
    for path in sorted(DEMO.glob("*/*.jsonl")):
        for row in path.read_text().splitlines():
            lines += [str(v) for v in json.loads(row).values()]
    for path in sorted((REPO / "lora_lightning" / "data" / "tasks").glob("*.yaml")):
        lines.append(path.read_text())
    return lines


def build_tokenizer(vocab_size: int = 1000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(), trainer)
    # No pad token on purpose: like GPT-2 and Pythia, the project must fall back to EOS.
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def build_model(arch: str, vocab_size: int, eos_id: int):
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, eos_token_id=eos_id, bos_token_id=eos_id)
    config = {
        "gpt2": lambda: GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=512, **common),
        "gpt_neox": lambda: GPTNeoXConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=512,
            **common,
        ),
        "llama": lambda: LlamaConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=128,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            **common,
        ),
    }[arch]()
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture
def dynamo_on():
    """Dynamo back on for one test (conftest turns it off for the suite), from a clean state; yields
    dynamo's counters."""
    import torch._dynamo

    torch._dynamo.reset()
    with torch._dynamo.config.patch(disable=False):
        yield torch._dynamo.utils.counters
    torch._dynamo.reset()


def captured(counters) -> int:
    """Frames and graphs dynamo has captured so far (to check it really ran, or did not)."""
    return sum(counters["stats"].values()) + sum(counters["frames"].values())


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """arch -> folder with a tiny random model and the tiny tokenizer, saved as a user would have it."""
    root = tmp_path_factory.mktemp("tiny_models")
    folders = {}
    for arch in ARCHS:
        folder = root / arch
        build_model(arch, len(tokenizer), tokenizer.eos_token_id).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[arch] = folder
    return folders


@pytest.fixture(scope="session")
def examples(tiny_models):
    """Sixteen demo training examples of mixed lengths (short bool_q answers, long xsum summaries)."""
    from lora_lightning import FlanDataModule

    dm = FlanDataModule(
        tasks=["bool_q", "common_gen", "xsum"], tokenizer=str(tiny_models["llama"]), cache_dir=None, max_length=256
    )
    dm.setup("fit")
    return [dm.train_set[i] for i in range(0, 176, 11)], dm.tokenizer.pad_token_id


def run_cli(
    *args: str, cwd: Path | None = None, timeout: int = 600, warnings: bool = False, fresh: bool = False
) -> subprocess.CompletedProcess:
    """``python -m lora_lightning ARGS`` as a user runs it, offline (in the repo unless ``cwd``); Python
    warnings are silenced unless ``warnings``. The process is forked from a zygote that has done the
    imports (``cli_zygote``: the same run, without Python's start-up); ``fresh`` (or ``warnings``, whose
    import-time part only a new interpreter shows) starts a new interpreter, for runs whose process is
    the point: DDP and FSDP ranks, what a user sees printed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if not warnings:
        env["PYTHONWARNINGS"] = "ignore"
    if not (fresh or warnings):
        return ZYGOTE.run(list(args), Path(cwd or REPO), env, timeout)
    return subprocess.run(
        [sys.executable, "-m", "lora_lightning", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


DEFAULT_CONFIG = str(REPO / "configs" / "default.yaml")


def tiny_fit_args(model: Path, root: Path, keys: dict | None = None, *extra: str, overlays: tuple = ()) -> list[str]:
    """``fit`` of configs/default.yaml (then each of ``overlays``, file names under configs/) on a tiny
    model at LoRA rank 4, every output (the data cache too) under ``root``. ``keys`` sets config keys
    (``{"data.batch_size": 2}`` is ``--data.batch_size 2``); ``extra`` goes last, as it is."""
    settings = {
        "model.model_name": model,
        "model.lora_r": 4,
        "trainer.default_root_dir": root,
        "data.cache_dir": Path(root) / "cache",
        **(keys or {}),
    }
    args = ["fit", "--config", DEFAULT_CONFIG]
    for overlay in overlays:
        args += ["--config", str(REPO / "configs" / overlay)]
    for key, value in settings.items():
        args += [f"--{key}", str(value)]
    return args + list(extra)


def needs_shared_data(task: str) -> Path:
    path = SHARED_DATA / f"{task}.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent: real Hub-format rows are a developer fixture, not shipped to users")
    return path


def random_adapter(base: Path, folder: Path, seed: int = 0, **lora) -> Path:
    """A LoRA adapter (rank 4, no dropout, unless ``lora`` says otherwise) with random non-zero weights,
    saved as training saves it, with the base's tokenizer."""
    import torch

    from lora_lightning.loading import load_causal_lm, load_tokenizer
    from lora_lightning.model.lora import apply_lora

    model = apply_lora(load_causal_lm(str(base)), **{"r": 4, "dropout": 0.0, **lora})
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.3)
    model.save_pretrained(folder)
    load_tokenizer(str(base)).save_pretrained(folder)
    return folder
