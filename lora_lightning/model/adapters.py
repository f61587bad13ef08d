"""Loading a trained adapter onto its base, and generating from prompts.

The prompt is rendered as in training (:func:`render_prompt`: plain FLAN text or the chat template),
and generation stops at EOS: the adapter was trained to end every completion with it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from lora_lightning.data.tokenization import render_prompt
from lora_lightning.model.loading import (DEFAULT_BASE_CACHE, ModelLoadError, load_causal_lm, load_tokenizer,
                                          resolve_model_path)



def adapter_base(lora_adapter_path: str | Path) -> str:
    """The base model an adapter folder names (``base_model_name_or_path`` of its config)."""
    config = Path(lora_adapter_path) / "adapter_config.json"
    if not config.is_file():
        raise ModelLoadError(f"{str(lora_adapter_path)!r} is not an adapter folder (no adapter_config.json)")
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{config} does not name its base model; pass the base explicitly")
    return base


def trained_prompt_format(adapter: str | Path) -> str:
    """The prompt format an adapter was trained with (``training_history.json``), plain if unknown."""
    history = Path(adapter) / "training_history.json"
    if history.is_file():
        return json.loads(history.read_text()).get("prompt_format") or "plain"
    return "plain"


def load_lora_model(base_model_path: str | None, lora_adapter_path: str | Path, device: str | torch.device = "cpu",
                    trust_remote_code: bool = False, base_cache_dir: str = DEFAULT_BASE_CACHE) -> Any:
    """Base model plus adapter, ready for inference (the guide's ``load_lora_model``).

    ``base_model_path`` may be None to use the base the adapter names.
    """
    base = resolve_model_path(base_model_path or adapter_base(lora_adapter_path), base_cache_dir)
    model = attach_adapter(load_causal_lm(base, trust_remote_code), lora_adapter_path)
    return model.to(device).eval()


def attach_adapter(model: Any, adapter: str | Path, trainable: bool = False, name: str = "default") -> Any:
    """``model`` with the adapter in folder ``adapter`` loaded by peft (a clear error when it does not fit)."""
    from peft import PeftModel

    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(adapter), adapter_name=name, is_trainable=trainable)
            return model
        return PeftModel.from_pretrained(model, str(adapter), adapter_name=name, is_trainable=trainable)
    except Exception as err:  # size mismatches, missing modules, corrupt safetensors: all "cannot use this"
        raise ModelLoadError(f"adapter {str(adapter)!r} cannot be loaded onto base {model.name_or_path!r}: "
                             f"{str(err).strip().splitlines()[0]}") from None


def load_adapters(base_model_path: str | None, adapters: dict[str, str | Path], device: str = "cpu",
                  base_cache_dir: str = DEFAULT_BASE_CACHE) -> Any:
    """One base with several adapters, each under its own name; switch with ``model.set_adapter(name)``.

    The base is the one the first adapter names unless given. Adapters trained on different task
    sets share the frozen base in memory: the guide's "modular" use.
    """
    if not adapters:
        raise ModelLoadError("give at least one adapter")
    names = list(adapters)
    base = resolve_model_path(base_model_path or adapter_base(adapters[names[0]]), base_cache_dir)
    model = load_causal_lm(base)
    for name in names:
        model = attach_adapter(model, adapters[name], name=name)
    model.set_adapter(names[0])
    return model.to(device).eval()


@torch.inference_mode()
def generate(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 8,
             prompt_format: str = "plain", max_prompt_tokens: int | None = None) -> list[str]:
    """Completions for ``prompts``, batched with left padding; greedy when temperature is 0.

    ``max_prompt_tokens`` cuts longer prompts from the start, as training does.
    """
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [render_prompt(tokenizer, p, prompt_format) for p in prompts[start:start + batch_size]]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=prompt_format == "plain",
                        truncation=max_prompt_tokens is not None, max_length=max_prompt_tokens).to(device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, **sampling)
        new = out[:, enc["input_ids"].shape[1]:]
        outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return outputs


def generate_command(*, adapter: str, prompt: str | None = None, base: str | None = None, max_new_tokens: int = 64,
                     temperature: float = 0.0, top_p: float = 1.0, device: str = "cpu",
                     base_cache_dir: str = DEFAULT_BASE_CACHE) -> None:
    """Generate completions with a trained adapter: for --prompt, or for each line typed (interactive).

    Args:
        adapter: Adapter folder written by training (e.g. checkpoints/default/adapter).
        prompt: The instruction, e.g. a FLAN-style question with its OPTIONS block. Without it,
            each line read from standard input is a prompt (a literal \\n in a line is a newline),
            until end of input; the model is loaded once.
        base: Base model; by default the one the adapter names.
        max_new_tokens: Most tokens to generate.
        temperature: 0 for greedy decoding; above 0 samples.
        top_p: Nucleus sampling mass (with temperature > 0).
        device: cpu, cuda, cuda:1, ...
        base_cache_dir: Cache of converted GGUF models.
    """
    model = load_lora_model(base, adapter, device, base_cache_dir=base_cache_dir)
    tokenizer = load_tokenizer(adapter)
    prompt_format = trained_prompt_format(adapter)

    def answer(text: str) -> None:
        print(generate(model, tokenizer, [text], max_new_tokens, temperature, top_p, prompt_format=prompt_format)[0],
              flush=True)

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
