"""Scoring a batch of evaluation examples with a model: completion loss, generation, rank classification.

Everything is scored within ``max_length`` and the model's context: a longer prompt is shortened as
in training (:func:`~lora_lightning.data.tokenization.encode_pairs`), and a generated answer's
prompt leaves room for its ``max_new_tokens``.

Rank classification is FLAN's: each option is scored by the log-probability of the option's tokens
(and the EOS that ends every trained completion) after the prompt, and the highest wins
(``accuracy_rank``: lm-evaluation-harness's ``acc`` on the exported tasks). ``accuracy_rank_norm``
divides each option's log-probability by its length in characters first (the harness's
``acc_norm``), which matters where options differ in length ("False" / "True"). All options of all
examples in a batch go through one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lora_lightning.data.tokenization import CausalLMCollator, choice_text, encode_pairs
from lora_lightning.model.generation import context_length, generate, prompt_budget
from lora_lightning.model.loss import sequence_losses
from lora_lightning.prompts import render_completion


@torch.inference_mode()
def completion_nll(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int,
    prompt_format: str = "plain",
) -> tuple[list[float], list[int]]:
    """Per pair: summed negative log-likelihood of the completion (+ EOS) and its token count."""
    encoded = encode_pairs(tokenizer, prompts, completions, max_length, prompt_format)
    kept = [i for i, e in enumerate(encoded) if e is not None]
    sums, counts = [float("nan")] * len(prompts), [0] * len(prompts)
    if not kept:
        return sums, counts
    batch = CausalLMCollator(tokenizer.pad_token_id)([vars(encoded[i]) for i in kept])
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    row_sums, row_counts = sequence_losses(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    for j, i in enumerate(kept):
        sums[i], counts[i] = float(row_sums[j]), int(row_counts[j])
    return sums, counts


def option_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    options: Sequence[Sequence[str]],
    max_length: int,
    prompt_format: str = "plain",
) -> list[list[float]]:
    """For each prompt, each option's summed log-probability (its tokens and the EOS after the
    prompt; NaN for an option that could not be scored). All options go through one forward pass."""
    flat_prompts = [p for p, opts in zip(prompts, options) for _ in opts]
    flat_options = [o for opts in options for o in opts]
    nll, _ = completion_nll(model, tokenizer, flat_prompts, flat_options, max_length, prompt_format)
    out, start = [], 0
    for opts in options:
        out.append([-s for s in nll[start : start + len(opts)]])
        start += len(opts)
    return out


def best_option(scores: Sequence[float]) -> int:
    """The index of the highest score; a NaN (an option that could not be scored) never wins."""
    return max(range(len(scores)), key=lambda k: scores[k] if scores[k] == scores[k] else float("-inf"))


def option_characters(tokenizer: Any, prompt: str, options: Sequence[str], prompt_format: str) -> list[int]:
    """Each option's length in characters as the harness's choice string spells it (the rendered
    completion up to its end-of-text), what lm-evaluation-harness's ``acc_norm`` divides by."""
    eos = tokenizer.eos_token or ""
    return [len(choice_text(render_completion(tokenizer, prompt, o, prompt_format), eos)) for o in options]


def rank_classify(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    options: Sequence[Sequence[str]],
    max_length: int,
    prompt_format: str = "plain",
) -> list[int]:
    """For each prompt, the index of its option with the highest completion log-probability."""
    return [best_option(lp) for lp in option_logprobs(model, tokenizer, prompts, options, max_length, prompt_format)]


def score_examples(
    model: Any, tokenizer: Any, examples: Sequence[dict], max_length: int, prompt_format: str = "plain"
) -> list[dict]:
    """Per example: loss sum and tokens of the reference completion, the generated text (up to the
    example's ``max_new_tokens``), and for classification the rank-classified option; all within
    ``max_length`` and the model's context."""
    max_length = min(max_length, context_length(model) or max_length)
    max_new_tokens = max(e["max_new_tokens"] for e in examples) if examples else 1
    prompts = [e["prompt"] for e in examples]
    nll, counts = completion_nll(
        model, tokenizer, prompts, [e["reference"] for e in examples], max_length, prompt_format
    )
    texts = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=len(prompts),
        prompt_format=prompt_format,
        max_prompt_tokens=prompt_budget(max_length, max_new_tokens),
    )
    ranked = ranked_norm = [None] * len(examples)
    if examples and examples[0]["options"]:
        options = [e["options"] for e in examples]
        logprobs = option_logprobs(model, tokenizer, prompts, options, max_length, prompt_format)
        ranked = [best_option(lp) for lp in logprobs]
        lengths = [option_characters(tokenizer, p, o, prompt_format) for p, o in zip(prompts, options)]
        ranked_norm = [best_option([x / n for x, n in zip(lp, ns)]) for lp, ns in zip(logprobs, lengths)]
    return [
        {**e, "loss_sum": s, "tokens": c, "prediction": t, "ranked": r, "ranked_norm": rn}
        for e, s, c, t, r, rn in zip(examples, nll, counts, texts, ranked, ranked_norm)
    ]
