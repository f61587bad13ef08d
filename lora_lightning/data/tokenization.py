"""Prompt/completion pairs to token ids and labels, and batches of them to padded tensors.

The loss is on the completion only: prompt positions get label -100. The completion is followed by
EOS, and EOS is labelled too, so the model learns to stop. That holds when the pad token *is* EOS
(GPT-2, Pythia): labels are built from positions, never by comparing ids with the pad id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

IGNORE_INDEX = -100


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


def encode_pairs(tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], max_length: int,
                 separator: str = "\n", min_prompt_tokens: int = 1) -> list[EncodedExample | None]:
    """Token ids for each ``prompt + separator`` then ``completion`` + EOS, within ``max_length``.

    When too long, the prompt loses tokens from its start (the end of a FLAN prompt holds the
    question and the options, right before the answer); the completion is never cut. An entry is
    None when even the completion plus ``min_prompt_tokens`` of prompt does not fit. One tokenizer
    call per side for the whole list, which is what makes it fast.
    """
    prompt_ids = tokenizer([p + separator for p in prompts], add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [fit_pair(p, c + [eos], max_length, min_prompt_tokens) for p, c in zip(prompt_ids, completion_ids)]


class CausalLMCollator:
    """Pads a batch to its own longest sequence (right padding) with an attention mask.

    Padded positions get ``pad_token_id`` in ``input_ids``, 0 in ``attention_mask`` and -100 in
    ``labels``.
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
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
