"""Prompt/completion pairs to token ids and labels, and batches of them to padded tensors.

The loss is on the completion only: prompt positions get label -100. The completion is followed by
EOS, and EOS is labelled too, so the model learns to stop. That holds when the pad token *is* EOS
(GPT-2, Pythia): labels are built from positions, never by comparing ids with the pad id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lora_lightning.errors import UserInputError

IGNORE_INDEX = -100
PROMPT_FORMATS = ("plain", "chat")


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]


def fit_pair(prompt_ids: Sequence[int], completion_ids: Sequence[int], max_length: int,
             min_prompt_tokens: int = 1) -> EncodedExample | None:
    """Joins prompt and completion ids, cutting the prompt's start; None when it cannot fit."""
    room = max_length - len(completion_ids)
    if room < min_prompt_tokens:
        return None
    prompt_ids = list(prompt_ids)[-room:] if len(prompt_ids) > room else list(prompt_ids)
    return EncodedExample(input_ids=prompt_ids + list(completion_ids),
                          labels=[IGNORE_INDEX] * len(prompt_ids) + list(completion_ids))


def render_prompt(tokenizer: Any, prompt: str, prompt_format: str = "plain", separator: str = "\n") -> str:
    """The text before the answer, the same in training and in generation.

    ``plain``: FLAN text, the prompt then ``separator``. ``chat``: the tokenizer's chat template
    with the prompt as the user turn, up to the start of the assistant turn.
    """
    if prompt_format == "plain":
        return prompt + separator
    if prompt_format != "chat":
        raise UserInputError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise UserInputError("the tokenizer has no chat template; use data.prompt_format=plain")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def render_completion(tokenizer: Any, prompt: str, completion: str, prompt_format: str = "plain") -> str:
    """The answer text; for ``chat`` the assistant turn as the template writes it (end-of-turn included)."""
    if prompt_format == "plain":
        return completion
    head = render_prompt(tokenizer, prompt, prompt_format)
    full = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": completion}], tokenize=False)
    if not full.startswith(head):
        raise UserInputError("the tokenizer's chat template does not render the user turn as a prefix of the "
                         "conversation; use data.prompt_format=plain")
    return full[len(head):]


def end_with_eos(ids: list[int], eos: int) -> list[int]:
    """Completion ids that end at EOS: cut after the last EOS (a chat turn's trailing newline) or append one."""
    if eos in ids:
        return ids[: len(ids) - ids[::-1].index(eos)]
    return ids + [eos]


def encode_pairs(tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], max_length: int,
                 prompt_format: str = "plain", min_prompt_tokens: int = 1) -> list[EncodedExample | None]:
    """Token ids for each rendered prompt then completion + EOS, within ``max_length``.

    When too long, the prompt loses tokens from its start (the end of a FLAN prompt holds the
    question and the options, right before the answer); the completion is never cut. An entry is
    None when even the completion plus ``min_prompt_tokens`` of prompt does not fit. One tokenizer
    call per side for the whole list, which is what makes it fast.
    """
    heads = [render_prompt(tokenizer, p, prompt_format) for p in prompts]
    tails = [render_completion(tokenizer, p, c, prompt_format) for p, c in zip(prompts, completions)]
    # Plain text gets the tokenizer's own special tokens (BOS for Llama); a chat template writes its own.
    prompt_ids = tokenizer(heads, add_special_tokens=prompt_format == "plain")["input_ids"]
    completion_ids = tokenizer(tails, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [fit_pair(p, end_with_eos(c, eos), max_length, min_prompt_tokens) for p, c in zip(prompt_ids, completion_ids)]


class CausalLMCollator:
    """Pads a batch to its own longest sequence (right padding) with an attention mask.

    Padded positions get ``pad_token_id`` in ``input_ids``, 0 in ``attention_mask`` and -100 in
    ``labels``. Example ids, when the examples have them, pass through (for auditing what was trained on).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: Sequence[dict[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(ex["input_ids"]) for ex in batch)
        input_ids = torch.full((len(batch), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, ex in enumerate(batch):
            n = len(ex["input_ids"])
            input_ids[row, :n] = torch.as_tensor(ex["input_ids"])
            labels[row, :n] = torch.as_tensor(ex["labels"])
            attention_mask[row, :n] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if "example_id" in batch[0]:
            out["example_id"] = [ex["example_id"] for ex in batch]
        return out
