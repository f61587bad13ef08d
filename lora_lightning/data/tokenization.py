"""Prompt/completion pairs to token ids and labels, and batches of them to padded tensors.

The loss is on the completion only: prompt positions get label -100. The completion is followed by
EOS, and EOS is labelled too, so the model learns to stop. That holds when the pad token *is* EOS
(GPT-2, Pythia): labels are built from positions, never by comparing ids with the pad id.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lora_lightning.prompts import render_completion, render_prompt

IGNORE_INDEX = -100


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]


def cut_prompt(prompt_ids: Sequence[int], room: int, special_ids: Collection[int] = ()) -> list[int]:
    """At most ``room`` ids of a prompt, cut from its start but keeping its leading special tokens
    (BOS, a chat template's opening marker): the model was never shown text without them."""
    ids = list(prompt_ids)
    if len(ids) <= room:
        return ids
    lead = 0
    while lead < len(ids) and ids[lead] in special_ids:
        lead += 1
    lead = min(lead, max(room - 1, 0))
    return ids[:lead] + ids[len(ids) - (room - lead) :]


def fit_pair(
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    max_length: int,
    min_prompt_tokens: int = 1,
    special_ids: Collection[int] = (),
) -> EncodedExample | None:
    """Joins prompt and completion ids, cutting the prompt's start (leading special tokens kept);
    None when it cannot fit."""
    room = max_length - len(completion_ids)
    if room < min_prompt_tokens:
        return None
    prompt_ids = cut_prompt(prompt_ids, room, special_ids)
    return EncodedExample(
        input_ids=prompt_ids + list(completion_ids), labels=[IGNORE_INDEX] * len(prompt_ids) + list(completion_ids)
    )


def end_with_eos(ids: list[int], eos: int) -> list[int]:
    """Completion ids that end at EOS: cut after the last EOS (a chat turn's trailing newline) or append one."""
    if eos in ids:
        return ids[: len(ids) - ids[::-1].index(eos)]
    return ids + [eos]


def encode_pairs(
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int,
    prompt_format: str = "plain",
    min_prompt_tokens: int = 1,
) -> list[EncodedExample | None]:
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
    special = set(tokenizer.all_special_ids)
    return [
        fit_pair(p, end_with_eos(c, eos), max_length, min_prompt_tokens, special)
        for p, c in zip(prompt_ids, completion_ids)
    ]


class CausalLMCollator:
    """Pads a batch to its own longest sequence (right padding) with an attention mask.

    Padded positions get ``pad_token_id`` in ``input_ids``, 0 in ``attention_mask`` and -100 in
    ``labels``. Example ids and task names, when the examples have them, pass through (for auditing what
    was trained on, and per-task curves).
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
        for key in ("example_id", "task"):
            if key in batch[0]:
                out[key] = [ex[key] for ex in batch]
        return out
