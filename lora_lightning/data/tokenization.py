"""Prompt/completion pairs to token ids and labels, and batches of them to padded tensors (one row
per example, or packed: several examples per row, each attending only to itself).

The loss is on the completion only: prompt positions get label -100. The completion is followed by
EOS, and EOS is labelled too, so the model learns to stop. That holds when the pad token *is* EOS
(GPT-2, Pythia): labels are built from positions, never by comparing ids with the pad id.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import torch

from lora_lightning.prompts import render_completion, render_prompt

IGNORE_INDEX = -100


class Batch(TypedDict, total=False):
    """A training or selection batch, as the collators make it and the model's loss reads it.

    ``input_ids``, ``attention_mask`` and ``labels`` are always there; ``position_ids`` and
    ``segments`` only in a packed batch (:class:`PackingCollator`); ``task`` and ``example_id`` (one
    per example) when the examples carry them; ``step_tokens`` and ``step_end`` when the batch comes
    from :class:`~lora_lightning.data.sampling.ResumableLoader` (the step's completion tokens on this
    rank, and whether the batch ends its optimizer step).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    task: list[str]
    example_id: list[int]
    step_tokens: int
    step_end: bool


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


def choice_text(completion: str, eos: str) -> str:
    """A rendered completion as training scores it: up to and including its last end-of-text (a chat
    turn's trailing newline is never trained), or with end-of-text appended, as :func:`end_with_eos`
    cuts the ids. The harness's choice strings, and the length ``accuracy_rank_norm`` divides by."""
    if not eos:
        return completion
    if eos in completion:
        return completion[: completion.rindex(eos) + len(eos)]
    return completion + eos


def encode_pairs(
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int,
    prompt_format: str = "plain",
    min_prompt_tokens: int = 1,
) -> list[EncodedExample | None]:
    """Token ids for each rendered prompt then completion + EOS, within ``max_length``.

    When too long, the prompt is shortened as :func:`encode_prompts` does (from the start of its
    text: the end of a FLAN prompt holds the question and the options, right before the answer;
    a chat template's turns stay whole); the completion is never cut. An entry is None when even
    the completion plus ``min_prompt_tokens`` of prompt (in chat: plus the template) does not fit.
    One tokenizer call per side for the whole list, which is what makes it fast.
    """
    tails = [render_completion(tokenizer, p, c, prompt_format) for p, c in zip(prompts, completions)]
    eos = tokenizer.eos_token_id
    completion_ids = [end_with_eos(c, eos) for c in tokenizer(tails, add_special_tokens=False)["input_ids"]]
    rooms = [max(max_length - len(c), 0) for c in completion_ids]
    prompt_ids = encode_prompts(tokenizer, prompts, prompt_format, rooms)
    return [
        fit_pair(p, c, max_length, min_prompt_tokens) if p is not None else None
        for p, c in zip(prompt_ids, completion_ids)
    ]


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], prompt_format: str, rooms: Sequence[int | None]
) -> list[list[int] | None]:
    """Token ids of each rendered prompt, at most its ``room`` (None: no limit); None when it cannot fit.

    ``plain``: the ids are cut from the start, leading special tokens (BOS) kept. ``chat``: the user
    content is cut from its start and the template rendered around what is left, so the system turn,
    the role headers and the generation prompt stay (:func:`fit_chat_prompts`). One tokenizer call
    for the whole list; only the prompts that are too long cost more.
    """
    heads = [render_prompt(tokenizer, p, prompt_format) for p in prompts]
    # Plain text gets the tokenizer's own special tokens (BOS for Llama); a chat template writes its own.
    ids: list[list[int] | None] = list(tokenizer(heads, add_special_tokens=prompt_format == "plain")["input_ids"])
    if prompt_format == "plain":
        special = set(tokenizer.all_special_ids)
        return [
            None if room is not None and room < 1 else cut_prompt(r, room or len(r), special)
            for r, room in zip(ids, rooms)
        ]
    long = [i for i, (r, room) in enumerate(zip(ids, rooms)) if room is not None and len(r) > room]
    if long:
        fitted = fit_chat_prompts(tokenizer, [prompts[i] for i in long], [rooms[i] for i in long])
        for i, row in zip(long, fitted):
            ids[i] = row
    return ids


def fit_chat_prompts(tokenizer: Any, prompts: Sequence[str], rooms: Sequence[int]) -> list[list[int] | None]:
    """Chat-template ids of each prompt within its room: the user content loses tokens from its start,
    then the template is rendered around the rest; None when not one content token fits.

    The template's own tokens are measured once (rendered around empty content); each result is
    re-tokenized and checked, since a cut can tokenize differently next to the template, and cut
    further by what it still exceeds, so every result is within its room exactly.
    """
    overhead = len(tokenizer(render_prompt(tokenizer, "", "chat"), add_special_tokens=False)["input_ids"])
    contents = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    keep = [min(room - overhead, len(c)) for room, c in zip(rooms, contents)]
    out: list[list[int] | None] = [None] * len(prompts)
    pending = [i for i in range(len(prompts)) if keep[i] > 0]
    while pending:
        rendered = [
            render_prompt(tokenizer, last_tokens_text(tokenizer, contents[i], keep[i]), "chat") for i in pending
        ]
        again = []
        for i, row in zip(pending, tokenizer(rendered, add_special_tokens=False)["input_ids"]):
            if len(row) <= rooms[i]:
                out[i] = row
            elif keep[i] - (len(row) - rooms[i]) > 0:
                keep[i] -= len(row) - rooms[i]
                again.append(i)
        pending = again
    return out


def last_tokens_text(tokenizer: Any, ids: Sequence[int], keep: int) -> str:
    """The text of the last ``keep`` ids, less a character the cut split in two (decoded as U+FFFD)."""
    return tokenizer.decode(ids[len(ids) - keep :], clean_up_tokenization_spaces=False).lstrip("\ufffd")


class CausalLMCollator:
    """Pads a batch to its own longest sequence (right padding) with an attention mask.

    Padded positions get ``pad_token_id`` in ``input_ids``, 0 in ``attention_mask`` and -100 in
    ``labels``. Example ids and task names, when the examples have them, pass through (for auditing what
    was trained on, and per-task curves).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: Sequence[dict[str, Sequence[int]]]) -> Batch:
        longest = max(len(ex["input_ids"]) for ex in batch)
        input_ids = torch.full((len(batch), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, ex in enumerate(batch):
            n = len(ex["input_ids"])
            input_ids[row, :n] = torch.as_tensor(ex["input_ids"])
            labels[row, :n] = torch.as_tensor(ex["labels"])
            attention_mask[row, :n] = 1
        out = Batch(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        for key in ("example_id", "task"):
            if key in batch[0]:
                out[key] = [ex[key] for ex in batch]  # type: ignore[literal-required]
        return out


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` placed into as few rows of at most ``capacity`` as first-fit decreasing
    finds: longest first (ties in input order), each into the first row with room."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if lengths[i] <= free), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


class PackingCollator(CausalLMCollator):
    """Packs a batch's examples, first-fit decreasing, into as few rows of at most ``max_length`` tokens
    as it can, each row padded to the longest.

    The batch holds exactly the examples it was given (an optimizer step trains on the same examples
    packed or not). Besides ``input_ids``, ``labels`` and ``attention_mask`` (1 on real tokens; for
    counting only: the model gets ``position_ids`` instead), it returns ``position_ids`` restarting at
    0 for every example (the padding of a row continues as a segment of its own), which is what makes
    transformers confine each example's attention to itself, and ``segments``: the batch index of the
    example each token belongs to (-1 on padding). An example's first token is never a target (as
    unpacked, where nothing precedes it), so no loss crosses from one example into the next. ``task``
    and ``example_id`` stay one entry per example, in the batch's order.
    """

    def __init__(self, pad_token_id: int, max_length: int):
        super().__init__(pad_token_id)
        self.max_length = max_length

    def __call__(self, batch: Sequence[dict[str, Sequence[int]]]) -> Batch:
        lengths = [len(ex["input_ids"]) for ex in batch]
        rows = first_fit_decreasing(lengths, max(self.max_length, max(lengths)))
        longest = max(sum(lengths[i] for i in row) for row in rows)
        input_ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        segments = torch.full((len(rows), longest), -1, dtype=torch.long)
        position_ids = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                end = start + lengths[i]
                input_ids[r, start:end] = torch.as_tensor(batch[i]["input_ids"])
                labels[r, start + 1 : end] = torch.as_tensor(batch[i]["labels"][1:])
                attention_mask[r, start:end] = 1
                segments[r, start:end] = i
                position_ids[r, start:end] = torch.arange(lengths[i])
                start = end
            position_ids[r, start:] = torch.arange(longest - start)
        out = Batch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            position_ids=position_ids,
            segments=segments,
        )
        for key in ("example_id", "task"):
            if key in batch[0]:
                out[key] = [ex[key] for ex in batch]  # type: ignore[literal-required]
        return out
