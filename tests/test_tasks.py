"""The task registry and template formatting."""

import string

import pytest

from lora_lightning.data.tasks import TaskError, TaskSpec, builtin_task_names, format_options, load_task

BOOLQ_ROW = {"question": "is water wet", "answer": True, "passage": "Water is a liquid."}
COMMON_GEN_ROW = {"concept_set_idx": 1, "concepts": ["dog", "ball", "catch"], "target": "The dog catches the ball."}
XSUM_ROW = {"document": "A cat was found.\nIt is fine.", "summary": "A lost cat is safe.", "id": "1"}


def test_registry_has_the_foundation_tasks_with_ten_templates_each():
    names = builtin_task_names()
    for name in ("bool_q", "common_gen", "xsum"):
        assert name in names
        task = load_task(name)
        assert len(task.templates) == 10
        assert task.hub_path and task.splits["train"] and task.splits["validation"]


@pytest.mark.parametrize("name", builtin_task_names())
def test_every_builtin_task_only_uses_placeholders_it_can_fill(name):
    task = load_task(name)
    allowed = set(task.fields) | {"options_"}
    for t in task.templates:
        for text in (t.prompt, t.completion):
            assert {p for _, p, _, _ in string.Formatter().parse(text) if p} <= allowed


def test_bool_q_template_has_flan_options_block_and_answer_as_option():
    task = load_task("bool_q")
    prompt, completion = task.format(BOOLQ_ROW, 0)
    assert prompt == "Water is a liquid.\n\nCan we conclude that is water wet?\n\nOPTIONS:\n- False\n- True"
    assert completion == "True"
    _, completion = task.format({**BOOLQ_ROW, "answer": False}, 3)
    assert completion == "False"


def test_options_block_format():
    assert format_options(["a", "b c"]) == "OPTIONS:\n- a\n- b c"


def test_common_gen_joins_concepts_and_completes_with_target():
    task = load_task("common_gen")
    prompt, completion = task.format(COMMON_GEN_ROW, 0)
    assert prompt == "Concepts: dog, ball, catch\n\nWrite a sentence that includes all these words."
    assert completion == "The dog catches the ball."


def test_xsum_templates_summarize_or_expand_the_document():
    task = load_task("xsum")
    doc, summary = XSUM_ROW["document"], XSUM_ROW["summary"]
    kinds = []
    for i in range(len(task.templates)):
        prompt, completion = task.format(XSUM_ROW, i)
        assert (doc in prompt and completion == summary) or (summary in prompt and completion == doc)
        kinds.append(completion == summary)
    assert kinds.count(True) == 8  # FLAN v1: eight summarize templates, two "write an article" ones


def test_template_draw_is_seeded_per_example_and_covers_the_templates():
    task = load_task("bool_q")
    first = [task.format_random(BOOLQ_ROW, seed=1, index=i) for i in range(60)]
    again = [task.format_random(BOOLQ_ROW, seed=1, index=i) for i in range(60)]
    other = [task.format_random(BOOLQ_ROW, seed=2, index=i) for i in range(60)]
    assert first == again
    assert first != other
    assert len({p for p, _ in first}) == 10  # 60 draws reach all ten templates


def test_label_outside_options_is_a_clear_error():
    with pytest.raises(TaskError, match=r"label 5 .*outside the option list"):
        load_task("anli").format({"premise": "p", "hypothesis": "h", "label": 5}, 0)


def test_unknown_task_names_the_known_ones():
    with pytest.raises(TaskError, match=r"unknown task 'bool_z'.*bool_q"):
        load_task("bool_z")


def test_user_task_yaml_is_checked(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("name: mine\nfields: {q: question}\ntemplates:\n  - {prompt: '{q} {nope}', completion: x}\n")
    with pytest.raises(TaskError, match=r"uses \{nope\}"):
        load_task(str(bad))
    good = tmp_path / "good.yaml"
    good.write_text(
        "name: good\nfields: {q: question, a: {column: answer, index: 0}}\n"
        "templates:\n  - {prompt: 'Q: {q}', completion: '{a}'}\n"
    )
    spec = load_task(str(good))
    assert isinstance(spec, TaskSpec) and spec.columns == ["answer", "question"]
    assert spec.format({"question": "why", "answer": ["because", "no"]}, 0) == ("Q: why", "because")
