"""The task metrics, and their registry: the one place a metric is defined.

A metric is one function below and one :class:`Metric` entry in :data:`METRICS` (the name a task YAML
lists, the table columns it fills with their display names, the example fields it needs,
higher-is-better). The task checks (:mod:`lora_lightning.data.tasks`), the results table and the
model card (:mod:`lora_lightning.evaluation.report`) all read the registry.

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

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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


# -- the registry --------------------------------------------------------------------------------

Records = Sequence[Mapping]
"""A task's scored evaluation examples: ``prediction``, ``references``, ``tokens``, ``loss_sum``, and
the fields a metric needs (``ranked``, ``ranked_norm``, ``answer``, ``options``, ``concepts``)."""


@dataclass(frozen=True)
class Metric:
    """A task metric: what a task YAML names (``name``), how it is computed from a task's scored
    examples (``compute``: one value per table column), the columns with their display names, the
    example fields it needs (a task that cannot give them is refused when its YAML loads), and
    whether higher is better."""

    name: str
    compute: Callable[[Records], dict[str, float]]
    columns: Mapping[str, str]
    needs: tuple[str, ...] = ()
    higher_is_better: bool = True


def loss_and_perplexity(records: Records) -> dict[str, float]:
    scored = [r for r in records if r["tokens"]]
    tokens = sum(r["tokens"] for r in scored)
    loss = sum(r["loss_sum"] for r in scored) / tokens if tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)) if tokens else float("nan")}


def accuracies(records: Records) -> dict[str, float]:
    def exact(r: Mapping) -> bool:
        return normalize_answer(r["prediction"]) == normalize_answer(r["options"][r["answer"]])

    return {
        "accuracy_rank": accuracy([r["ranked"] == r["answer"] for r in records]),
        "accuracy_rank_norm": accuracy([r["ranked_norm"] == r["answer"] for r in records]),
        "accuracy_exact": accuracy([exact(r) for r in records]),
    }


def predictions(records: Records) -> list[str]:
    return [r["prediction"] for r in records]


def references(records: Records) -> list[Sequence[str]]:
    return [r["references"] for r in records]


LOSS = Metric(
    "loss", loss_and_perplexity, {"loss": "completion loss", "perplexity": "perplexity"}, higher_is_better=False
)
"""Computed for every task (not named in task YAML)."""

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "accuracy",
            accuracies,
            {
                "accuracy_rank": "accuracy (rank classification)",
                "accuracy_rank_norm": "accuracy (rank classification per character)",
                "accuracy_exact": "accuracy (exact match of the greedy answer)",
            },
            needs=("options", "answer"),
        ),
        Metric("rouge_l", lambda rs: {"rouge_l": rouge_l(predictions(rs), references(rs))}, {"rouge_l": "ROUGE-L"}),
        Metric(
            "coverage",
            lambda rs: {"coverage": concept_coverage(predictions(rs), [r["concepts"] for r in rs])},
            {"coverage": "concept coverage"},
            needs=("concepts",),
        ),
        Metric(
            "exact_match",
            lambda rs: {"exact_match": squad_scores(predictions(rs), references(rs))["exact_match"]},
            {"exact_match": "exact match"},
        ),
        Metric("f1", lambda rs: {"f1": squad_scores(predictions(rs), references(rs))["f1"]}, {"f1": "F1"}),
        Metric(
            "sacrebleu",
            lambda rs: {"sacrebleu": sacrebleu(predictions(rs), references(rs))},
            {"sacrebleu": "SacreBLEU"},
        ),
    )
}
"""The metrics a task YAML may name, by name."""


def column_metric(column: str) -> Metric | None:
    """The metric that fills a table column (``accuracy_rank`` -> accuracy), or None."""
    return next((m for m in (LOSS, *METRICS.values()) if column in m.columns), None)


def display_name(column: str) -> str:
    """A table column's readable name (the Hub's model-index ``name``)."""
    metric = column_metric(column)
    return metric.columns[column] if metric is not None else column


def task_columns(metric_names: Sequence[str]) -> list[str]:
    """The table columns of a task that names ``metric_names``, in the order the table shows them."""
    return [column for m in (LOSS, *(METRICS[name] for name in metric_names)) for column in m.columns]


def lower_is_better_columns() -> list[str]:
    return [column for m in (LOSS, *METRICS.values()) if not m.higher_is_better for column in m.columns]


def task_metric_values(metric_names: Sequence[str], records: Records) -> dict[str, float]:
    """The completion loss and perplexity, then every named metric's columns, over a task's scored examples."""
    out = LOSS.compute(records)
    for name in metric_names:
        out.update(METRICS[name].compute(records))
    return out
