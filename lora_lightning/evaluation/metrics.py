"""The task metrics of the flan-gpt2 project, on lists of strings.

Every function takes predictions and references in plain Python and returns a number on a 0-100
scale (NaN for an empty list of predictions). Each follows a standard definition, computed by (or
checked in tests/test_metrics.py against) its reference package:

* ROUGE-L (``rouge_l``): Google's ``rouge-score`` package, ``RougeScorer(["rougeL"], use_stemmer=True)``:
  sentence-level LCS F1 (``rougeL``, not the newline-split summary-level ``rougeLsum``); text is
  lowercased, every character outside ``[a-z0-9]`` becomes a space (so punctuation and non-ASCII
  letters are dropped), and tokens longer than 3 characters are Porter-stemmed. With several
  references a prediction keeps its best F1; the result is the mean over examples.
  (torchmetrics' ``rouge_score`` agrees only with ``use_stemmer=True``; its default, without stemming,
  does not, so the reference package is called directly.)
* BLEU (``sacrebleu``): ``sacrebleu.corpus_bleu`` with its defaults: corpus-level BLEU-4, tokenizer
  ``13a``, smoothing ``exp``, case-sensitive. Examples may have different numbers of references:
  missing ones are passed as ``None``, which sacrebleu skips.
* SQuAD v1.1 exact match and F1 (``squad_scores``): torchmetrics' ``squad``.
* Concept coverage (``concept_coverage``, common_gen): as in CommonGen (Lin et al., 2020), the share of
  an example's input concepts that appear in the lemmatized output, averaged over examples. Words are
  lemmatized with ``lemminflect``: every lemma of every part of speech (``getAllLemmas``), or the
  noun and verb out-of-vocabulary rules (``getAllLemmasOOV``) for an unknown word, plus the word
  itself. A concept, lemmatized the same way, is covered when one of its lemmas equals a lemma of an
  output word ("mice" covers "mouse", "ran" covers "run"; "card" does not cover "car").
* Accuracy (``accuracy``): the share of correct answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

WORD = re.compile(r"[a-z0-9]+")


def normalize_answer(text: str) -> str:
    """Lowercase, trim, drop a final period: how a generated option is compared to the options."""
    return text.strip().lower().rstrip(".").strip()


def accuracy(correct: Sequence[bool]) -> float:
    return 100.0 * sum(correct) / len(correct) if correct else float("nan")


@lru_cache(maxsize=1)
def _rouge_l_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F1 (rouge-score, stemmed); with several references, each prediction takes its best one."""
    if not predictions:
        return float("nan")
    scorer = _rouge_l_scorer()
    best = []
    for prediction, refs in zip(predictions, references, strict=True):
        if not refs:
            raise ValueError("rouge_l: every prediction needs at least one reference")
        best.append(max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in refs))
    return 100.0 * sum(best) / len(best)


@lru_cache(maxsize=65536)
def lemmas(word: str) -> frozenset[str]:
    """The word (lowercased) and all its lemmas under any part of speech, by lemminflect."""
    from lemminflect import getAllLemmas, getAllLemmasOOV

    word = word.lower()
    found = getAllLemmas(word)
    if not found:  # out of vocabulary: the rule-based noun and verb lemmas
        found = {**getAllLemmasOOV(word, "NOUN"), **getAllLemmasOOV(word, "VERB")}
    return frozenset({word}.union(*found.values()))


def concept_in(concept: str, words: Sequence[str]) -> bool:
    """A concept appears if one of its lemmas is a lemma of one of the words (every token, for a multi-word one)."""
    output = frozenset().union(*(lemmas(w) for w in words))
    tokens = WORD.findall(concept.lower())
    return bool(tokens) and all(lemmas(t) & output for t in tokens)


def concept_coverage(predictions: Sequence[str], concepts: Sequence[Sequence[str]]) -> float:
    """Mean share of each example's concepts that appear, lemmatized, in its generated sentence (common_gen)."""
    if not predictions:
        return float("nan")
    shares = []
    for text, wanted in zip(predictions, concepts, strict=True):
        words = WORD.findall(text.lower())
        unique = list(dict.fromkeys(c.strip().lower() for c in wanted))
        if not unique:
            raise ValueError("concept_coverage: every example needs at least one concept")
        shares.append(sum(concept_in(c, words) for c in unique) / len(unique))
    return 100.0 * sum(shares) / len(shares)


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """SQuAD v1.1 exact match and F1 (best over each question's reference answers)."""
    from torchmetrics.functional.text import squad

    if not predictions:
        return {"exact_match": float("nan"), "f1": float("nan")}
    preds = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(predictions)]
    target = [
        {"answers": {"text": list(r), "answer_start": [0] * len(r)}, "id": str(i)} for i, r in enumerate(references)
    ]
    out = squad(preds, target)
    return {"exact_match": float(out["exact_match"]), "f1": float(out["f1"])}


def sacrebleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU as ``sacrebleu.corpus_bleu`` (tokenizer 13a, smoothing exp); references may vary in number."""
    from sacrebleu import corpus_bleu  # the package, not this function

    if not predictions:
        return float("nan")
    if len(predictions) != len(references):
        raise ValueError("sacrebleu: one list of references per prediction")
    if not all(references):
        raise ValueError("sacrebleu: every prediction needs at least one reference")
    width = max(len(r) for r in references)
    # sacrebleu wants one stream per reference slot; a None slot is skipped for that sentence.
    streams = [[r[i] if i < len(r) else None for r in references] for i in range(width)]
    return float(corpus_bleu(list(predictions), streams).score)
