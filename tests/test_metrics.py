"""The task metrics against their reference packages (rouge-score, sacrebleu, lemminflect) on the same strings."""

import math

import pytest

from lora_lightning.metrics import (
    accuracy,
    concept_coverage,
    lemmas,
    normalize_answer,
    rouge_l,
    sacrebleu,
    squad_scores,
)

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
sacrebleu_pkg = pytest.importorskip("sacrebleu")


# ----------------------------------------------------------------------------------------------------- ROUGE-L

ROUGE_CASES = [
    ("the cat sat on the mat", ["the cat is on the mat"]),
    ("The cats were RUNNING quickly!", ["A cat runs quickly."]),  # casing, punctuation, stemming
    ("He's the U.S. president, isn't he?", ["He is the US President; is not he"]),
    ("The dogs caught frisbees in the parks.", ["a dog ran", "dogs catch a frisbee in the park", "A dog caught it."]),
    ("def add(x, y): return x + y", ["def add(a, b):\n    return a + b"]),
    ("Generalization generalizes generally", ["general generalize"]),
    ("data data data", ["the data is here", "data"]),
    ("", ["something"]),
    ("Mañana vamos a la playa.", ["Mañana iremos a la playa", "Vamos a la playa mañana."]),
]


def reference_rouge_l(predictions, references):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    best = [max(scorer.score(r, p)["rougeL"].fmeasure for r in refs) for p, refs in zip(predictions, references)]
    return 100 * sum(best) / len(best)


@pytest.mark.parametrize("prediction,refs", ROUGE_CASES)
def test_rouge_l_matches_rouge_score_per_example(prediction, refs):
    assert rouge_l([prediction], [refs]) == pytest.approx(reference_rouge_l([prediction], [refs]), abs=1e-6)


def test_rouge_l_matches_rouge_score_on_a_batch_and_by_hand():
    preds, refs = [p for p, _ in ROUGE_CASES], [r for _, r in ROUGE_CASES]
    assert rouge_l(preds, refs) == pytest.approx(reference_rouge_l(preds, refs), abs=1e-6)
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 tokens: P = R = F = 5/6
    assert rouge_l(["the cat sat on the mat"], [["the cat is on the mat"]]) == pytest.approx(100 * 5 / 6, abs=1e-6)
    # multi-reference: the best reference counts, not the first or the mean
    assert rouge_l(["the cat sat on the mat"], [["a dog ran", "the cat is on the mat"]]) == pytest.approx(100 * 5 / 6)
    # stemming on: cats/cat, running/run match; case and punctuation ignored -> P = R = 1
    assert rouge_l(["Cats RUNNING!"], [["cat, run"]]) == pytest.approx(100.0)
    # stemming is Porter on both sides: "quickly" -> "quickli" is not "quick"; "is" (3 letters) is not stemmed
    assert rouge_l(["runs quickly"], [["run quick"]]) == pytest.approx(50.0)
    # mean over examples: (5/6 + 0.8) / 2 ("hello world" vs "hello there world": P = 1, R = 2/3)
    assert rouge_l(
        ["the cat sat on the mat", "hello world"], [["the cat is on the mat"], ["hello there world"]]
    ) == pytest.approx(100 * (5 / 6 + 0.8) / 2, abs=1e-6)
    assert math.isnan(rouge_l([], []))


# -------------------------------------------------------------------------------------------------------- BLEU

BLEU_PREDS = [
    "The cat sat on a mat.",
    "He read the book because he was interested in world history.",
    "Hola, ¿cómo estás?",
    "It's 3.5 km away; don't go!",
    "the quick brown fox",
]
BLEU_REFS = [
    ["The cat is on the mat.", "There is a cat on the mat.", "A cat sits on the mat."],
    ["He was interested in world history because he read the book."],
    ["Hola, ¿qué tal?", "Hola, ¿cómo estás tú?"],
    ["It is 3.5 km away, do not go!"],
    ["The quick brown fox jumps over the lazy dog."],
]


def transposed(references):
    """sacrebleu's layout: one stream per reference slot, None where an example has fewer references."""
    width = max(map(len, references))
    return [[r[i] if i < len(r) else None for r in references] for i in range(width)]


def test_sacrebleu_matches_the_package_with_unequal_reference_counts():
    expected = sacrebleu_pkg.corpus_bleu(BLEU_PREDS, transposed(BLEU_REFS)).score
    assert 0 < expected < 100
    assert sacrebleu(BLEU_PREDS, BLEU_REFS) == pytest.approx(expected, abs=1e-6)
    # the None slots are really skipped: same as the BLEU class with explicit defaults (13a, exp)
    explicit = sacrebleu_pkg.BLEU(tokenize="13a", smooth_method="exp").corpus_score(BLEU_PREDS, transposed(BLEU_REFS))
    assert sacrebleu(BLEU_PREDS, BLEU_REFS) == pytest.approx(explicit.score, abs=1e-6)


@pytest.mark.parametrize("i", range(len(BLEU_PREDS)))
def test_sacrebleu_matches_the_package_per_sentence_corpus(i):
    expected = sacrebleu_pkg.corpus_bleu([BLEU_PREDS[i]], [[r] for r in BLEU_REFS[i]]).score
    assert sacrebleu([BLEU_PREDS[i]], [BLEU_REFS[i]]) == pytest.approx(expected, abs=1e-6)


def test_sacrebleu_uses_exp_smoothing_and_case_sensitive_13a():
    # no 4-gram in common: unsmoothed BLEU would be 0, exp smoothing keeps it positive
    pred, ref = "the cat sat on a mat", "the cat is on the mat"
    assert sacrebleu_pkg.corpus_bleu([pred], [[ref]], smooth_method="none").score == 0.0
    assert sacrebleu([pred], [[ref]]) == pytest.approx(sacrebleu_pkg.corpus_bleu([pred], [[ref]]).score, abs=1e-6)
    assert sacrebleu([pred], [[ref]]) > 0
    # identical strings: 100; no shared token: 0; case matters (13a, lowercase=False)
    assert sacrebleu(["the quick brown fox jumps"], [["the quick brown fox jumps"]]) == pytest.approx(100.0)
    assert sacrebleu(["completely different words here"], [["the quick brown fox jumps"]]) == 0.0
    assert sacrebleu(["The Quick Brown Fox Jumps"], [["the quick brown fox jumps"]]) < 100.0
    # 13a splits the final period off: "fox." == "fox ."
    assert sacrebleu(["the quick brown fox jumps."], [["the quick brown fox jumps ."]]) == pytest.approx(100.0)
    # adding a duplicate reference changes nothing
    assert sacrebleu(BLEU_PREDS, [r + [r[0]] for r in BLEU_REFS]) == pytest.approx(sacrebleu(BLEU_PREDS, BLEU_REFS))
    assert math.isnan(sacrebleu([], []))
    with pytest.raises(ValueError):
        sacrebleu(["a b c d"], [[]])


# ------------------------------------------------------------------------------------------- concept coverage


def old_prefix_stem_rule(concept, words):
    """The rule this module used before: same Porter stem, or a word starting with the concept's first len-1 letters."""
    porter = pytest.importorskip("nltk.stem").PorterStemmer()
    prefix = concept[:-1] if len(concept) > 3 else concept
    return any(porter.stem(w) == porter.stem(concept) or w.startswith(prefix) for w in words)


@pytest.mark.parametrize(
    "concept,sentence,covered",
    [
        ("run", "The boy ran to school.", True),  # irregular verb: old rule missed it
        ("mouse", "Two mice hide in the barn.", True),  # irregular plural: old rule missed it
        ("catch", "The dog caught the ball.", True),
        ("goose", "Geese fly south.", True),
        ("car", "She drew a card.", False),  # old prefix rule: false positive
        ("car", "He pushed the cart.", False),
        ("leaf", "He learned to read.", False),  # old prefix rule: "lea" matched "learned"
        ("dog", "a dogma of the church", False),
    ],
)
def test_concept_lemma_rule_fixes_the_old_prefix_stem_rule(concept, sentence, covered):
    words = sentence.lower().replace(".", " ").split()
    assert concept_coverage([sentence], [[concept]]) == (100.0 if covered else 0.0)
    assert old_prefix_stem_rule(concept, words) != covered  # the old rule got each of these wrong


@pytest.mark.parametrize(
    "concept,sentence",
    [
        ("leaf", "Leaves fell."),
        ("dog", "The dogs bark."),
        ("run", "She is running."),
        ("iron", "I am ironing."),
        ("wolf", "Wolves howl."),
        ("child", "The children play."),
        ("frisbee", "They threw frisbees."),
        ("sit", "He sat down."),
        ("park", "in the park"),
    ],
)
def test_concept_lemma_rule_keeps_regular_forms(concept, sentence):
    assert concept_coverage([sentence], [[concept]]) == 100.0


def test_lemmas_come_from_lemminflect():
    from lemminflect import getAllLemmas, getAllLemmasOOV

    assert lemmas("leaves") == {"leaves", *getAllLemmas("leaves")["NOUN"], *getAllLemmas("leaves")["VERB"]}
    assert {"leaf", "leave"} <= lemmas("leaves")
    assert lemmas("Mice") == {"mice", "mouse"}
    assert "run" in lemmas("ran") and "run" in lemmas("running")
    # an unknown word falls back to the rule-based noun and verb lemmas
    assert getAllLemmas("frisbees") == {}
    assert getAllLemmasOOV("frisbees", "NOUN")["NOUN"] == ("frisbee",)
    assert "frisbee" in lemmas("frisbees")


def test_concept_coverage_by_hand():
    # dog (dogs), frisbee (frisbee), catch (caught), leaf (leaves): all 4; "under" is not a concept
    sentence = "The dogs caught a frisbee under the leaves."
    assert concept_coverage([sentence], [["dog", "frisbee", "catch", "leaf"]]) == 100.0
    # tree is missing: 3/4
    assert concept_coverage(["The dogs caught a frisbee."], [["dog", "frisbee", "catch", "tree"]]) == 75.0
    assert concept_coverage(["I am ironing a shirt"], [["iron", "Iron", "shirt"]]) == 100.0  # repeats count once
    assert concept_coverage(["x", "She is running in the park"], [["dog"], ["run", "park"]]) == 50.0
    assert concept_coverage(
        ["A mouse ate the cheese", "The cars"], [["mice", "eat", "cheese"], ["car", "road"]]
    ) == pytest.approx((100 + 50) / 2)
    assert math.isnan(concept_coverage([], []))


# ------------------------------------------------------------------------------------------------- the others


def test_squad_accuracy_and_normalization():
    scores = squad_scores(["in France", "1889"], [["France", "in France"], ["in 1889"]])
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx((100 + 200 / 3) / 2, abs=1e-3)  # second: P = 1, R = 1/2
    assert math.isnan(squad_scores([], [])["f1"])
    assert normalize_answer("  True. ") == "true"
    assert accuracy([True, False, True, True]) == 75.0
    assert math.isnan(accuracy([]))


def test_every_builtin_task_names_registered_metrics_with_display_names():
    from lora_lightning.data.tasks import builtin_task_names, load_task
    from lora_lightning.metrics import METRICS, column_metric, task_columns

    for name in builtin_task_names():
        task = load_task(name)
        assert task.metrics, name
        assert set(task.metrics) <= set(METRICS), name
        for column in task_columns(task.metrics):
            metric = column_metric(column)  # every column belongs to a metric that names it readably
            assert metric is not None and metric.columns[column].strip(), (name, column)


def test_a_metric_added_to_the_registry_reaches_task_checks_table_and_card(tmp_path, monkeypatch):
    """Adding a metric is one function and one registry entry (lora_lightning/metrics.py): the task
    YAML may name it, the results table computes it, the card names it, and its needs are checked."""
    import yaml

    from lora_lightning.data.tasks import TaskError, load_task
    from lora_lightning.evaluation.report import results_rows, task_metrics
    from lora_lightning.export.model_card import card_results
    from lora_lightning.metrics import METRICS, Metric

    def mean_words(records):
        return {"words": sum(len(r["prediction"].split()) for r in records) / len(records)}

    monkeypatch.setitem(METRICS, "words", Metric("words", mean_words, {"words": "words per answer"}))
    monkeypatch.setitem(METRICS, "needy", Metric("needy", mean_words, {"needy": "needs concepts"}, needs=("concepts",)))
    task = {
        "name": "mine",
        "hub": {"path": "me/data"},
        "splits": {"train": "train"},
        "fields": {"question": "question", "answer": "answer"},
        "metrics": ["words"],
        "eval": {"max_new_tokens": 8},
        "templates": [{"prompt": "{question}", "completion": "{answer}"}],
    }
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(task))
    spec = load_task(str(path))
    records = [
        {"prediction": "one two three", "references": ["x"], "tokens": 2, "loss_sum": 1.0},
        {"prediction": "one", "references": ["y"], "tokens": 2, "loss_sum": 3.0},
    ]
    values = task_metrics(spec, records)
    assert values["words"] == 2.0 and values["loss"] == 1.0
    rows = results_rows({"adapter": {"mine": values}})
    assert {"task": "mine", "split": "test", "metric": "words", "name": "words per answer", "value": 2.0} in (
        card_results(rows, {"mine": "test"})
    )
    path.write_text(yaml.safe_dump({**task, "metrics": ["needy"]}))
    with pytest.raises(TaskError, match="needy.*eval.concepts"):
        load_task(str(path))
