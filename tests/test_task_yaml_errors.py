"""A bad user task YAML is refused when it is loaded, in one line naming the file and the field.

Never a KeyError/TypeError/AttributeError traceback, and never a late failure in the middle of a
run (a ``max_new_tokens: "many"`` found at the first evaluation, a ``coverage`` metric without
concepts found when scoring).
"""

import pytest
import yaml
from conftest import REPO, run_cli

from lora_lightning.data.tasks import TaskError, builtin_task_names, load_task
from lora_lightning.errors import UserInputError

DELETE = object()
VALID = {
    "name": "mine",
    "description": "Decide whether a statement is true.",
    "hub": {"path": "me/statements", "name": None},
    "splits": {"train": "train", "validation": "validation", "test": None},
    "fields": {
        "statement": "statement",
        "topic": {"column": "meta.topic"},
        "answer": {"column": "label", "option": True},
    },
    "options": ["no", "yes"],
    "metrics": ["accuracy"],
    "eval": {"max_new_tokens": 4},
    "templates": [
        {"prompt": "{statement}\n\n{options_}", "completion": "{answer}"},
        {"prompt": "Is this about {topic}? {statement}", "completion": "{answer}"},
    ],
}


def task_yaml(tmp_path, text=None, filename="mine.yaml", **changes):
    """A task file: ``VALID`` with ``changes`` (``DELETE`` drops a key), or ``text`` as it is."""
    if text is None:
        raw = {**VALID, **changes}
        text = yaml.safe_dump({k: v for k, v in raw.items() if v is not DELETE}, sort_keys=False)
    path = tmp_path / filename
    path.write_text(text)
    return str(path)


def refused(path, *needles):
    """The load of ``path`` fails with a one-line TaskError naming the file and each of ``needles``."""
    with pytest.raises(UserInputError) as info:
        load_task(path)
    err = info.value
    message = str(err)
    assert isinstance(err, TaskError)
    assert "\n" not in message, message
    assert f"task file {path!r}" in message, message
    for needle in needles:
        assert needle in message, message
    return message


# -- what keeps working ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", builtin_task_names())
def test_every_bundled_task_still_loads(name):
    assert len(builtin_task_names()) == 10
    task = load_task(name)
    assert task.name == name and task.templates and task.metrics


def test_the_valid_base_task_loads_and_formats(tmp_path):
    task = load_task(task_yaml(tmp_path))
    row = {"statement": "Water is wet.", "meta": {"topic": "water"}, "label": 1}
    assert task.format(row, 0) == ("Water is wet.\n\nOPTIONS:\n- no\n- yes", "yes")
    assert task.eval.max_new_tokens == 4 and task.hub_path == "me/statements"


def test_unquoted_yaml_booleans_and_numbers_as_options_still_work(tmp_path):
    # `options: [no, yes]` is two YAML booleans; user files already rely on it meaning "False", "True".
    path = task_yaml(
        tmp_path,
        text="name: t\nfields: {a: {column: label, option: true}}\noptions: [no, yes, 3]\n"
        "templates:\n  - {prompt: 'Pick.', completion: '{a}'}\n",
    )
    assert load_task(path).options == ["False", "True", "3"]


# -- one test per kind of bad input ---------------------------------------------------------------


def test_empty_file(tmp_path):
    refused(task_yaml(tmp_path, text=""), "is empty", "name", "templates")


def test_yaml_syntax_error_is_one_line_with_its_position(tmp_path):
    path = task_yaml(tmp_path, text="name: mine\ntemplates:\n  - {prompt: 'a', completion: 'b'\nfields: {}\n")
    refused(path, "is not valid YAML", "line ")


def test_file_that_is_not_utf8_text(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"name: \xff\xfe\x00bad\n")
    refused(str(path), "UTF-8")


def test_top_level_that_is_not_a_mapping(tmp_path):
    refused(task_yaml(tmp_path, text="- name: mine\n- templates: []\n"), "must hold a mapping", "a list")


def test_unknown_top_level_key(tmp_path):
    refused(task_yaml(tmp_path, template=VALID["templates"]), "'template'", "templates")


@pytest.mark.parametrize("value", [DELETE, "", 5, ["mine"]])
def test_name_missing_or_not_a_string(tmp_path, value):
    refused(task_yaml(tmp_path, name=value), "'name'")


def test_description_of_the_wrong_type(tmp_path):
    refused(task_yaml(tmp_path, description=["two", "lines"]), "'description'", "string")


@pytest.mark.parametrize(
    "value, field",
    [
        ("me/statements", "'hub'"),
        (["me/statements"], "'hub'"),
        ({"path": 5}, "hub.path"),
        ({"path": "me/statements", "subset": "x"}, "'subset'"),
    ],
)
def test_hub_that_is_not_a_mapping_of_strings(tmp_path, value, field):
    refused(task_yaml(tmp_path, hub=value), field)


@pytest.mark.parametrize(
    "value, field",
    [
        (["train", "validation"], "'splits'"),
        ({"train": "train", "dev": "validation"}, "'dev'"),
        ({"train": ["train"]}, "splits.train"),
    ],
)
def test_splits_of_the_wrong_shape(tmp_path, value, field):
    refused(task_yaml(tmp_path, splits=value), field)


def test_fields_that_is_not_a_mapping(tmp_path):
    refused(task_yaml(tmp_path, fields=["statement", "answer"]), "'fields'", "mapping")


@pytest.mark.parametrize(
    "spec, field",
    [
        (5, "fields.statement"),
        ({"index": 0}, "fields.statement"),
        ({"column": ""}, "fields.statement.column"),
        ({"column": "a..b"}, "fields.statement.column"),
        ({"column": "statement", "index": "first"}, "fields.statement.index"),
        ({"column": "statement", "index": -1}, "fields.statement.index"),
        ({"column": "statement", "join": 5}, "fields.statement.join"),
        ({"column": "statement", "option": "yes"}, "fields.statement.option"),
        ({"column": "statement", "index": 0, "join": ","}, "fields.statement"),
        ({"column": "statement", "default": "x"}, "'default'"),
    ],
)
def test_field_spec_of_the_wrong_type(tmp_path, spec, field):
    fields = {**VALID["fields"], "statement": spec}
    refused(task_yaml(tmp_path, fields=fields), field)


@pytest.mark.parametrize("name", ["my field", "options_", "a.b"])
def test_field_name_that_cannot_be_a_placeholder(tmp_path, name):
    fields = {**VALID["fields"], name: "statement"}
    refused(task_yaml(tmp_path, fields=fields), f"fields: {name!r}")


def test_option_field_without_options(tmp_path):
    refused(
        task_yaml(
            tmp_path,
            options=DELETE,
            metrics=["rouge_l"],
            templates=[{"prompt": "{statement}", "completion": "{answer}"}],
        ),
        "fields.answer",
        "options",
    )


@pytest.mark.parametrize("value", [DELETE, [], "{statement}", {"prompt": "{statement}", "completion": "{answer}"}])
def test_templates_missing_empty_or_not_a_list(tmp_path, value):
    refused(task_yaml(tmp_path, templates=value), "'templates'", "list")


def test_template_that_is_a_string_not_a_mapping(tmp_path):
    templates = [VALID["templates"][0], "{statement} -> {answer}"]
    refused(task_yaml(tmp_path, templates=templates), "templates[1]", "prompt", "completion")


@pytest.mark.parametrize("missing", ["prompt", "completion"])
def test_template_missing_prompt_or_completion(tmp_path, missing):
    templates = [VALID["templates"][0], {k: v for k, v in VALID["templates"][1].items() if k != missing}]
    message = refused(task_yaml(tmp_path, templates=templates), f"templates[1] has no {missing!r}")
    assert "each template needs prompt and completion" in message


def test_template_with_an_unknown_key(tmp_path):
    templates = [{**VALID["templates"][0], "answer": "{answer}"}]
    refused(task_yaml(tmp_path, templates=templates), "templates[0]", "'answer'")


@pytest.mark.parametrize("value", [["{statement}"], 42, None, ""])
def test_template_text_that_is_not_a_non_empty_string(tmp_path, value):
    templates = [{"prompt": value, "completion": "{answer}"}]
    refused(task_yaml(tmp_path, templates=templates), "templates[0].prompt")


@pytest.mark.parametrize("text", ["{statement", "statement}", "{statement:d}", "{statement!x}"])
def test_template_that_is_not_a_valid_format_string(tmp_path, text):
    templates = [VALID["templates"][0], {"prompt": text, "completion": "{answer}"}]
    refused(task_yaml(tmp_path, templates=templates), "templates[1].prompt", "{{")


def test_template_placeholder_not_in_fields(tmp_path):
    templates = [VALID["templates"][0], {"prompt": "{statement} {nope}", "completion": "{answer}"}]
    refused(task_yaml(tmp_path, templates=templates), "templates[1].prompt", "{nope}", "'fields'")


@pytest.mark.parametrize(
    "value, field",
    [
        ("no, yes", "'options'"),
        (5, "'options'"),
        ([], "'options'"),
        (["no", {"text": "yes"}], "options[1]"),
        (["no", None], "options[1]"),
        ({"cols": ["a", "b"]}, "'cols'"),
        ({"columns": "a"}, "options.columns"),
        ({"columns": ["a", 5]}, "options.columns[1]"),
    ],
)
def test_options_that_are_not_a_list(tmp_path, value, field):
    refused(task_yaml(tmp_path, options=value), field)


@pytest.mark.parametrize(
    "value, field", [("accuracy", "'metrics'"), (["accuracy", 5], "metrics[1]"), ({"accuracy": True}, "'metrics'")]
)
def test_metrics_that_are_not_a_list_of_names(tmp_path, value, field):
    refused(task_yaml(tmp_path, metrics=value), field)


def test_unknown_metric_names_the_known_ones(tmp_path):
    refused(task_yaml(tmp_path, metrics=["accuracy", "bleu"]), "metrics", "'bleu'", "sacrebleu", "rouge_l")


def test_metric_the_task_cannot_feed(tmp_path):
    refused(task_yaml(tmp_path, metrics=["coverage"]), "coverage", "eval.concepts")
    no_options = {"statement": "statement", "answer": "label"}
    refused(
        task_yaml(
            tmp_path, fields=no_options, options=DELETE, templates=[{"prompt": "{statement}", "completion": "{answer}"}]
        ),
        "accuracy",
        "option",
    )


@pytest.mark.parametrize(
    "value, field",
    [
        (64, "'eval'"),
        ({"max_new_tokens": "many"}, "eval.max_new_tokens"),
        ({"max_new_tokens": 0}, "eval.max_new_tokens"),
        ({"max_new_tokens": True}, "eval.max_new_tokens"),
        ({"max_new_tokens": 2.5}, "eval.max_new_tokens"),
        ({"group_by": [1, 2]}, "eval.group_by"),
        ({"references": 5}, "eval.references"),
        ({"concepts": {"column": "c"}}, "eval.concepts"),
        ({"max_tokens": 8}, "'max_tokens'"),
    ],
)
def test_eval_of_the_wrong_types(tmp_path, value, field):
    refused(task_yaml(tmp_path, eval=value), field)


# -- as a user meets it ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_refuses_a_bad_task_yaml_in_one_line(tmp_path, tiny_models):
    templates = [VALID["templates"][0], {"completion": "{answer}"}]
    path = task_yaml(tmp_path, templates=templates)
    root = tmp_path / "run"
    out = run_cli(
        "fit",
        "--config",
        str(REPO / "configs" / "default.yaml"),
        "--model.model_name",
        str(tiny_models["llama"]),
        "--model.lora_r",
        "4",
        "--trainer.default_root_dir",
        str(root),
        "--data.cache_dir",
        str(root / "cache"),
        "--data.tasks",
        f"[{path}]",
        "--trainer.max_epochs",
        "1",
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("lora-lightning: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], out.stderr[-3000:]
    # Besides the one error line, at most Lightning's own "Seed set to 42" notice.
    assert all(line.startswith("Seed set to") for line in lines[:-1]), out.stderr[-3000:]
    assert path in errors[0] and "templates[1] has no 'prompt'" in errors[0]
    assert not (root / "adapter").exists()
