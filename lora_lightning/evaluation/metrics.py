"""The task metrics of the flan-gpt2 project, on lists of strings.

ROUGE-L, SQuAD exact match / F1 and SacreBLEU come from torchmetrics; accuracy and common_gen's
concept coverage are defined here. Every function takes predictions and references in plain
Python and returns a number on a 0-100 scale (losses aside), so they can be checked by hand.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

WORD = re.compile(r"[a-z0-9]+")


def normalize_answer(text: str) -> str:
    """Lowercase, trim, drop a final period: how a generated option is compared to the options."""
    return text.strip().lower().rstrip(".").strip()


def accuracy(correct: Sequence[bool]) -> float:
    return 100.0 * sum(correct) / len(correct) if correct else float("nan")


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F1; with several references, each prediction takes its best one."""
    from torchmetrics.functional.text.rouge import rouge_score

    if not predictions:
        return float("nan")
    scores = rouge_score(list(predictions), [list(r) for r in references], rouge_keys="rougeL", accumulate="best")
    return 100.0 * float(scores["rougeL_fmeasure"])


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem import PorterStemmer

    return PorterStemmer()


def concept_in(concept: str, words: Sequence[str]) -> bool:
    """A concept appears if a word shares its Porter stem, or its first len-1 letters (leaf / leaves)."""
    stem = _stemmer().stem
    c = concept.lower()
    prefix = c[:-1] if len(c) > 3 else c
    return any(stem(w) == stem(c) or w.startswith(prefix) for w in words)


def concept_coverage(predictions: Sequence[str], concepts: Sequence[Sequence[str]]) -> float:
    """Mean share of each example's concepts that appear in its generated sentence (common_gen)."""
    if not predictions:
        return float("nan")
    shares = []
    for text, wanted in zip(predictions, concepts):
        words = WORD.findall(text.lower())
        unique = list(dict.fromkeys(w.lower() for w in wanted))
        shares.append(sum(concept_in(c, words) for c in unique) / len(unique))
    return 100.0 * sum(shares) / len(shares)


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """SQuAD v1.1 exact match and F1 (best over each question's reference answers)."""
    from torchmetrics.functional.text import squad

    if not predictions:
        return {"exact_match": float("nan"), "f1": float("nan")}
    preds = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(predictions)]
    target = [{"answers": {"text": list(r), "answer_start": [0] * len(r)}, "id": str(i)} for i, r in enumerate(references)]
    out = squad(preds, target)
    return {"exact_match": float(out["exact_match"]), "f1": float(out["f1"])}


def sacrebleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    from torchmetrics.functional.text import sacre_bleu_score

    if not predictions:
        return float("nan")
    width = max(len(r) for r in references)
    padded = [list(r) + [r[0]] * (width - len(r)) for r in references]  # torchmetrics wants equal counts
    return 100.0 * float(sacre_bleu_score(list(predictions), padded))
