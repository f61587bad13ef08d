"""Generating completions from prompts, laid out as in training.

The prompt is rendered in the adapter's format (:func:`~lora_lightning.prompts.render_prompt`),
cut from the start like a training prompt (leading special tokens kept) when it is too long, and
generation stops at any of the model's end ids: the tokenizer's EOS, which ends every trained
completion, and the ``eos_token_id`` list of the model's ``generation_config`` (a chat model ends
its turn with its own token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lora_lightning.data.tokenization import cut_prompt
from lora_lightning.model.sharding import is_sharded
from lora_lightning.prompts import render_prompt


def end_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS, then the generation config's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, (list, tuple)) else [configured]
    return list(dict.fromkeys(i for i in [tokenizer.eos_token_id, *configured] if i is not None))


def left_padded(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> dict[str, torch.Tensor]:
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, longest - len(r) :] = torch.as_tensor(list(r))
            mask[i, longest - len(r) :] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    prompt_format: str = "plain",
    max_prompt_tokens: int | None = None,
) -> list[str]:
    """Completions for ``prompts``, batched with left padding; greedy when temperature is 0.

    ``max_prompt_tokens`` cuts longer prompts from the start, as training does.
    """
    device = next(model.parameters()).device
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    )
    special = set(tokenizer.all_special_ids)
    stop = end_ids(model, tokenizer)
    sharded = is_sharded(model)
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [render_prompt(tokenizer, p, prompt_format) for p in prompts[start : start + batch_size]]
        rows = tokenizer(texts, add_special_tokens=prompt_format == "plain")["input_ids"]
        if max_prompt_tokens is not None:
            rows = [cut_prompt(r, max_prompt_tokens, special) for r in rows]
        enc = left_padded(rows, tokenizer.pad_token_id, device)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop,
            pad_token_id=tokenizer.pad_token_id,
            synced_gpus=sharded,  # a sharded forward is collective: every rank steps until all are done
            **sampling,
        )
        new = out[:, enc["input_ids"].shape[1] :]
        outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return outputs
