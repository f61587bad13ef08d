"""Every task's templates on real Hub-format rows from ../shared/data, through the local-file path.

Each template is filled from a real row; the completion must equal the source field it names,
computed here independently of the task YAML, and every other field the prompt uses must appear in it.
"""

import string

import pytest
from conftest import needs_shared_data

from lora_lightning.data.sources import load_task_splits
from lora_lightning.data.tasks import load_task

ANLI = ["entailment", "neutral", "contradiction"]

# Per task: the value each template placeholder must take, from a raw Hub row.
EXPECTED = {
    "bool_q": lambda r: {
        "text": r["passage"],
        "question": r["question"],
        "title": r["question"],
        "answer": "True" if r["answer"] else "False",
    },
    "common_gen": lambda r: {
        "concepts": ", ".join(r["concepts"]),
        "concepts_newline": "\n".join(r["concepts"]),
        "target": r["target"],
    },
    "xsum": lambda r: {"text": r["document"], "summary": r["summary"]},
    "anli": lambda r: {"context": r["premise"], "hypothesis": r["hypothesis"], "answer": ANLI[r["label"]]},
    "squad": lambda r: {
        "title": r["title"],
        "context": r["context"],
        "question": r["question"],
        "answer": r["answers"]["text"][0],
    },
    "samsum": lambda r: {"dialogue": r["dialogue"], "summary": r["summary"]},
    "paws": lambda r: {"sentence1": r["sentence1"], "sentence2": r["sentence2"], "answer": ["No", "Yes"][r["label"]]},
}


def placeholders(text):
    return [p for _, p, _, _ in string.Formatter().parse(text) if p]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_template_on_real_rows(name):
    path = needs_shared_data(name)
    task = load_task(name)
    rows = load_task_splits(task, "demo", {"train": str(path)})["train"]
    assert len(rows) >= 200
    checked = 0
    for row in rows.select(range(25)):
        expected = EXPECTED[name](row)
        for i, template in enumerate(task.templates):
            prompt, completion = task.format(row, i)
            assert completion == template.completion.format(**expected)
            for field in placeholders(template.prompt):
                if field != "options_":
                    assert expected[field] in prompt, (name, i, field)
            if "{options_}" in template.prompt:
                assert "OPTIONS:\n" + "\n".join(f"- {o}" for o in task.row_options(row)) in prompt
            checked += 1
    assert checked == 25 * len(task.templates) == 250


def test_bool_q_answer_is_the_option_for_the_label():
    rows = load_task_splits(load_task("bool_q"), "demo", {"train": str(needs_shared_data("bool_q"))})["train"]
    task = load_task("bool_q")
    answers = [task.format(row, 0)[1] for row in rows]
    assert answers == ["True" if r["answer"] else "False" for r in rows]
    assert 0.5 < answers.count("True") / len(answers) < 0.8  # BoolQ dev is ~64% true


def test_common_gen_forward_templates_hold_every_concept():
    task = load_task("common_gen")
    rows = load_task_splits(task, "demo", {"train": str(needs_shared_data("common_gen"))})["train"]
    forward = [i for i, t in enumerate(task.templates) if t.completion == "{target}"]
    assert len(forward) == 6
    for row in rows.select(range(50)):
        for i in forward:
            prompt, completion = task.format(row, i)
            assert completion == row["target"]
            assert all(c in prompt for c in row["concepts"])


def test_squad_completion_is_the_first_answer():
    task = load_task("squad")
    rows = load_task_splits(task, "demo", {"train": str(needs_shared_data("squad"))})["train"]
    for row in rows.select(range(50)):
        prompt, completion = task.format(row, 0)
        assert completion == row["answers"]["text"][0] and row["context"] in prompt


def test_cosmos_qa_options_come_from_the_row():
    # No real cosmos_qa rows are shipped; this row is written for the test in the Hub layout.
    task = load_task("cosmos_qa")
    row = {
        "id": "x",
        "context": "I missed the bus, so I walked.",
        "question": "Why did I walk?",
        "answer0": "I like rain.",
        "answer1": "I missed the bus.",
        "answer2": "None of the above.",
        "answer3": "My car broke.",
        "label": 1,
    }
    answer_templates = [i for i, t in enumerate(task.templates) if t.completion == "{answer}"]
    for i in answer_templates:
        prompt, completion = task.format(row, i)
        assert completion == "I missed the bus."
        if "{options_}" in task.templates[i].prompt:
            assert "OPTIONS:\n- I like rain.\n- I missed the bus.\n- None of the above.\n- My car broke." in prompt
