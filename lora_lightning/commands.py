"""The commands that are not Trainer runs: ``lora-lightning generate``, ``merge``, ``export-gguf`` and ``compare``.

Each is a plain function whose docstring is its ``--help`` (jsonargparse's ``CLI``), as in LitGPT.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jsonargparse import CLI

from lora_lightning.errors import UserInputError
from lora_lightning.evaluation.runs import comparison_table, read_run
from lora_lightning.export.gguf import export_gguf
from lora_lightning.loading import DEFAULT_BASE_CACHE, load_tokenizer
from lora_lightning.model.adapters import load_lora_model, trained_quantization
from lora_lightning.model.generation import generate
from lora_lightning.model.merge import merge_adapter
from lora_lightning.prompts import resolve_prompt_format

COMMANDS = ("generate", "merge", "export-gguf", "compare")


def run_command(name: str, argv: list[str], prog: str) -> None:
    """Runs ``name`` (one of :data:`COMMANDS`) with its own arguments."""
    commands = {
        "generate": generate_command,
        "merge": merge_command,
        "export-gguf": export_gguf_command,
        "compare": compare_command,
    }
    if name == "compare" and argv and not any(a.startswith("-") for a in argv):
        argv = [json.dumps(argv)]  # `compare RUN RUN ...` as well as the list form `compare '[RUN, RUN]'`
    CLI(commands[name], args=argv, prog=f"{prog} {name}")


def generate_command(
    *,
    adapter: str,
    prompt: str | None = None,
    base: str | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    device: str = "cpu",
    base_cache_dir: str = DEFAULT_BASE_CACHE,
) -> None:
    """Generate completions with a trained adapter: for --prompt, or for each line typed (interactive).

    Args:
        adapter: Adapter folder written by training (e.g. checkpoints/default/adapter).
        prompt: The instruction, e.g. a FLAN-style question with its OPTIONS block. Without it,
            each line read from standard input is a prompt (a literal \\n in a line is a newline),
            until end of input; the model is loaded once.
        base: Base model; by default the one the adapter names.
        max_new_tokens: Most tokens to generate. A longer prompt is shortened from its start (a chat
            prompt's template kept whole) to leave room for them in the model's context.
        temperature: 0 for greedy decoding; above 0 samples.
        top_p: Nucleus sampling mass (with temperature > 0).
        device: cpu, cuda, cuda:1, ...
        base_cache_dir: Cache of converted GGUF models.
    """
    model = load_lora_model(base, adapter, device, base_cache_dir=base_cache_dir)
    tokenizer = load_tokenizer(adapter)
    prompt_format = resolve_prompt_format("auto", tokenizer, adapter)

    def answer(text: str) -> None:
        print(
            generate(model, tokenizer, [text], max_new_tokens, temperature, top_p, prompt_format=prompt_format)[0],
            flush=True,
        )

    if prompt is not None:
        return answer(prompt)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("prompt> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            answer(line.rstrip("\n").replace("\\n", "\n"))


def merge_command(
    *,
    adapter: str,
    output: str,
    base: str | None = None,
    atol: float = 1e-4,
    overwrite: bool = False,
    base_cache_dir: str = DEFAULT_BASE_CACHE,
) -> None:
    """Merge a trained adapter into its base and save a standard Transformers model folder.

    Args:
        adapter: Adapter folder written by training (e.g. checkpoints/default/adapter).
        output: Folder for the merged model (safetensors, config, tokenizer).
        base: Base model; by default the one the adapter names.
        atol: Largest logit difference allowed between the merged model and base + adapter.
        overwrite: Replace a non-empty output folder that lora_lightning did not write (its files are
            deleted). Never the current directory, a folder above it, or a checkout.
        base_cache_dir: Cache of converted GGUF models.
    """
    diff = merge_adapter(adapter, output, base, atol, overwrite, base_cache_dir)
    print(f"Merged {adapter} into {output} (largest logit difference {diff:.2e})")
    quantized = trained_quantization(adapter)
    if quantized:
        print(
            f"The adapter was trained on a {quantized} base; it was merged into the full-precision base "
            f"weights (not into dequantized {quantized} weights): the model users serve"
        )


def export_gguf_command(
    *,
    adapter: str,
    output: str | None = None,
    base: str | None = None,
    overwrite: bool = False,
    base_cache_dir: str = DEFAULT_BASE_CACHE,
) -> None:
    """Write a trained adapter as a llama.cpp LoRA GGUF, for llama-cli --lora or an Ollama Modelfile's ADAPTER.

    The file applies to the base model's GGUF (``llama-cli -m base.gguf --lora adapter.gguf``).
    Converts Llama (SmolLM2), GPT-2 and GPT-NeoX adapters of linear layers; DoRA, PiSSA/OLoRA, LoRA
    bias, embedding or tied lm_head targets and other variants llama.cpp cannot apply are refused
    with one line. rsLoRA's scale is kept (the alpha written is lora_alpha * sqrt(r)).

    Args:
        adapter: Adapter folder written by training (e.g. checkpoints/default/adapter).
        output: The .gguf file to write; by default the adapter folder's path plus .gguf
            (checkpoints/default/adapter.gguf).
        base: Base model whose config (architecture, heads, layers) to use; by default the one the
            adapter names. No weights are loaded.
        overwrite: Replace an existing output file that lora_lightning did not write.
        base_cache_dir: Cache of converted GGUF models.
    """
    done = export_gguf(adapter, output, base, overwrite, base_cache_dir)
    print(
        f"Wrote {done.path} (llama.cpp LoRA, architecture {done.architecture}, {done.modules} modules, "
        f"rank {done.rank}, alpha {done.alpha:g}); use it with: llama-cli -m BASE.gguf --lora {done.path}"
    )


def compare_command(runs: list[str]) -> None:
    """Print a markdown table comparing training runs from their TensorBoard event files: the settings
    that differ between them and their headline metrics (best validation loss and its step, and the
    evaluation results of ``make eval`` / ``lora-lightning test`` of their adapters).

    Args:
        runs: Run log folders (``checkpoints/<run>/lightning_logs/version_N``), or run folders
            (``checkpoints/<run>``: the newest version in it).
    """
    table = []
    for run in runs:
        path = Path(run)
        versions = sorted((path / "lightning_logs").glob("version_*"), key=lambda p: p.stat().st_mtime, reverse=True)
        found = [read_run(f) for f in versions or [path] if any(f.glob("events.out.tfevents.*"))]
        fits = [r for r in found if "hp/best_val_loss" in r["metrics"]]  # `test` runs log beside their `fit`
        if not fits:
            raise UserInputError(f"{run!r} holds no training run's TensorBoard events; give checkpoints/<run>")
        table.append(fits[0])
    print(comparison_table(table), end="")
