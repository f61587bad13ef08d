"""Generating completions from prompts, laid out as in training.

The prompt is rendered in the adapter's format (:func:`~lora_lightning.prompts.render_prompt`) and,
when it is too long for the model's context minus ``max_new_tokens`` (or a caller's limit, such as
what training saw), shortened as a training prompt is
(:func:`~lora_lightning.data.tokenization.encode_prompts`: plain text from its start, a chat prompt's
user content from its start with the template's turns kept whole). Generation stops at any of the
model's end ids: the tokenizer's EOS, which ends every trained completion, and the ``eos_token_id``
list of the model's ``generation_config`` (a chat model ends its turn with its own token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lora_lightning.data.tokenization import encode_prompts
from lora_lightning.errors import UserInputError
from lora_lightning.model.sharding import is_sharded

MIN_PROMPT_TOKENS = 8
"""Prompt tokens a generation keeps under ``max_length`` however many tokens it may generate."""

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length")
"""Config keys that name a model's context (positions), in the order they are tried."""


def context_length(model: Any) -> int | None:
    """The most positions the model takes (prompt + generated tokens); None when its config names none."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_budget(max_length: int, max_new_tokens: int) -> int:
    """Most prompt tokens so that prompt + generation stays within ``max_length`` (what training saw),
    but at least :data:`MIN_PROMPT_TOKENS`: a long generation still sees the end of its question."""
    return max(max_length - max_new_tokens, MIN_PROMPT_TOKENS)


def prompt_room(model: Any, max_new_tokens: int, max_prompt_tokens: int | None = None) -> int | None:
    """Most prompt tokens: the model's context minus ``max_new_tokens``, and ``max_prompt_tokens``;
    None when neither limits it. A context that leaves no room is the user's setting to fix."""
    context = context_length(model)
    if context is None:
        return max_prompt_tokens
    if context - max_new_tokens < 1:
        raise UserInputError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's {context} positions; lower it"
        )
    return context - max_new_tokens if max_prompt_tokens is None else min(context - max_new_tokens, max_prompt_tokens)


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

    Prompts are shortened to fit the model's context minus ``max_new_tokens`` and, when given,
    ``max_prompt_tokens`` (:func:`prompt_room`), as training shortens them.
    """
    device = next(model.parameters()).device
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    )
    room = prompt_room(model, max_new_tokens, max_prompt_tokens)
    stop = end_ids(model, tokenizer)
    sharded = is_sharded(model)
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        rows = encode_prompts(tokenizer, batch, prompt_format, [room] * len(batch))
        if any(r is None for r in rows):
            raise UserInputError(
                f"the chat template alone does not fit in {room} prompt tokens (what the model's context or "
                f"max_length leaves after max_new_tokens={max_new_tokens}); lower max_new_tokens, or use "
                "prompt_format plain"
            )
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
