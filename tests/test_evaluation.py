"""Task metrics against hand-computed values, rank classification, and evaluation examples."""

import math

import pytest
import torch

from lora_lightning.data.eval_examples import build_eval_examples
from lora_lightning.data.tasks import load_task
from lora_lightning.evaluation.report import as_csv, results_rows, task_metrics
from lora_lightning.loading import load_causal_lm, load_tokenizer
from lora_lightning.metrics import accuracy, concept_coverage, normalize_answer, rouge_l, sacrebleu, squad_scores
from lora_lightning.model.scoring import best_option, option_logprobs, rank_classify, score_examples


def test_rouge_l_single_and_multi_reference_by_hand():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat": P = R = 5/6
    assert rouge_l(["the cat sat on the mat"], [["the cat is on the mat"]]) == pytest.approx(100 * 5 / 6, abs=1e-3)
    # several references: the best one counts
    assert rouge_l(["the cat sat on the mat"], [["a dog ran", "the cat is on the mat"]]) == pytest.approx(
        100 * 5 / 6, abs=1e-3
    )
    # "hello world" vs "hello there world": LCS 2, P = 1, R = 2/3, F = 0.8; mean with the first: (5/6 + 0.8) / 2
    assert rouge_l(
        ["the cat sat on the mat", "hello world"], [["the cat is on the mat"], ["hello there world"]]
    ) == pytest.approx(100 * (5 / 6 + 0.8) / 2, abs=1e-3)


def test_concept_coverage_matches_lemmas_by_hand():
    # dog (dogs), frisbee, leaf (leaves) and catch (caught: an irregular form, matched by its lemma): 4/4
    assert (
        concept_coverage(["The dogs caught a frisbee under the leaves."], [["dog", "frisbee", "catch", "leaf"]])
        == 100.0
    )
    assert concept_coverage(["She is running in the park"], [["run", "park"]]) == 100.0
    assert concept_coverage(["I am ironing a shirt"], [["iron", "iron", "shirt"]]) == 100.0  # repeats count once
    assert concept_coverage(["x", "She is running in the park"], [["dog"], ["run", "park"]]) == 50.0


def test_squad_exact_match_and_f1_by_hand():
    scores = squad_scores(["in France", "1889"], [["France", "in France"], ["in 1889"]])
    assert scores["exact_match"] == pytest.approx(50.0)
    # second answer: P = 1, R = 1/2, F1 = 2/3
    assert scores["f1"] == pytest.approx((100 + 200 / 3) / 2, abs=1e-3)


def test_accuracy_normalization_and_bleu():
    assert normalize_answer("  True. ") == "true"
    assert accuracy([True, False, True, True]) == 75.0
    assert sacrebleu(["the quick brown fox jumps"], [["the quick brown fox jumps"]]) == pytest.approx(100.0)
    assert sacrebleu(["completely different words here"], [["the quick brown fox jumps"]]) == 0.0


def independent_logprob(model, tokenizer, prompt, option):
    prompt_ids = tokenizer(prompt + "\n")["input_ids"]
    option_ids = tokenizer(option, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + option_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    positions = range(len(prompt_ids) - 1, ids.shape[1] - 1)
    return sum(float(logp[p, ids[0, p + 1]]) for p in positions)


def test_rank_classification_picks_the_option_with_the_higher_log_probability(tiny_models):
    model = load_causal_lm(str(tiny_models["gpt2"])).eval()
    tokenizer = load_tokenizer(str(tiny_models["gpt2"]))
    prompts = ["Is the sky blue?", "Pick one:", "Which is it, friend?"]
    options = [["False", "True"], ["entailment", "neutral", "contradiction"], ["No", "Yes"]]
    choices = rank_classify(model, tokenizer, prompts, options, max_length=64)
    for prompt, opts, choice in zip(prompts, options, choices):
        scores = [independent_logprob(model, tokenizer, prompt, o) for o in opts]
        assert choice == max(range(len(opts)), key=lambda k: scores[k])
        assert len(set(round(s, 6) for s in scores)) == len(scores)  # no ties: the choice is meaningful


def test_per_character_rank_is_lm_eval_acc_norm(tiny_models):
    """accuracy_rank_norm's choice: the highest log-probability divided by the choice string's length
    in characters (the option and the end-of-text it is scored with), as lm-eval's acc_norm."""
    model = load_causal_lm(str(tiny_models["gpt2"])).eval()
    tokenizer = load_tokenizer(str(tiny_models["gpt2"]))
    prompts = ["Is the sky blue?", "Pick one:", "Which is it, friend?", "A or B?"]
    options = [["False", "True"], ["entailment", "neutral", "contradiction"], ["No", "Yes"], ["A", "BBBBBBBB"]]
    examples = [
        {"prompt": p, "options": o, "reference": o[0], "max_new_tokens": 2, "answer": 0}
        for p, o in zip(prompts, options)
    ]
    rows = score_examples(model, tokenizer, examples, max_length=64)
    logprobs = option_logprobs(model, tokenizer, prompts, options, max_length=64)
    for row, prompt, opts, lp in zip(rows, prompts, options, logprobs):
        assert lp == pytest.approx([independent_logprob(model, tokenizer, prompt, o) for o in opts], abs=1e-4)
        per_char = [x / len(o + tokenizer.eos_token) for x, o in zip(lp, opts)]
        assert row["ranked"] == max(range(len(opts)), key=lambda k: lp[k])
        assert row["ranked_norm"] == max(range(len(opts)), key=lambda k: per_char[k])
    assert best_option([float("nan"), -3.0, -2.0]) == 2 and best_option([-1.0, float("nan")]) == 0


def test_eval_examples_group_references_and_use_only_main_templates():
    task = load_task("common_gen")
    rows = [
        {"concept_set_idx": 1, "concepts": ["dog", "ball"], "target": "A dog chases a ball."},
        {"concept_set_idx": 1, "concepts": ["dog", "ball"], "target": "The dog has a ball."},
        {"concept_set_idx": 2, "concepts": ["sun", "sea"], "target": "The sun sets over the sea."},
    ]
    examples = build_eval_examples(task, rows, limit=None, seed=0)
    assert len(examples) == 2
    assert examples[0]["references"] == ["A dog chases a ball.", "The dog has a ball."]
    assert examples[0]["concepts"] == ["dog", "ball"] and examples[0]["options"] is None
    xsum = load_task("xsum")
    row = {"document": "Long article text.", "summary": "Short.", "id": "1"}
    for ex in build_eval_examples(xsum, [row] * 50, limit=None, seed=0):
        assert ex["reference"] == "Short."  # never a "write an article" template
    squad = load_task("squad")
    row = {
        "id": "1",
        "title": "T",
        "context": "C",
        "question": "Q?",
        "answers": {"text": ["a", "b"], "answer_start": [0, 1]},
    }
    assert build_eval_examples(squad, [row], None, 0)[0]["references"] == ["a", "b"]


def test_few_shot_prepends_exemplars_in_the_same_template():
    task = load_task("bool_q")
    train = [{"question": f"is {i} even", "answer": i % 2 == 0, "passage": f"Number {i}."} for i in range(10)]
    row = {"question": "is water wet", "answer": True, "passage": "Water."}
    [zero] = build_eval_examples(task, [row], None, seed=3)
    [one] = build_eval_examples(task, [row], None, seed=3, shots=1, shot_rows=train)
    assert one["prompt"].endswith(zero["prompt"]) and one["prompt"] != zero["prompt"]
    assert one["prompt"].count("OPTIONS:") == 2 and one["answer"] == 1 and one["options"] == ["False", "True"]


def test_task_metrics_and_results_table():
    task = load_task("bool_q")
    records = [
        {
            "task": "bool_q",
            "loss_sum": 2.0,
            "tokens": 2,
            "prediction": "True",
            "ranked": 1,
            "ranked_norm": 1,
            "answer": 1,
            "options": ["False", "True"],
            "references": ["True"],
        },
        {
            "task": "bool_q",
            "loss_sum": 1.0,
            "tokens": 2,
            "prediction": "yes",
            "ranked": 1,
            "ranked_norm": 0,
            "answer": 0,
            "options": ["False", "True"],
            "references": ["False"],
        },
    ]
    m = task_metrics(task, records)
    assert m["loss"] == 0.75 and m["perplexity"] == pytest.approx(math.exp(0.75))
    assert m["accuracy_rank"] == 50.0 and m["accuracy_exact"] == 50.0 and m["accuracy_rank_norm"] == 100.0
    rows = results_rows({"base": {"bool_q": {"loss": 1.0}}, "adapter": {"bool_q": {"loss": 0.25}}})
    assert rows == [{"task": "bool_q", "metric": "loss", "base": 1.0, "adapter": 0.25, "delta": -0.75}]
    assert as_csv(rows).splitlines() == ["task,metric,base,adapter,delta", "bool_q,loss,1.0,0.25,-0.75"]
