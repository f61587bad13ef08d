"""The task registry: what each instruction task is, as data.

Every task is one YAML file in ``lora_lightning/data/tasks/``: its Hub dataset id and split names,
how template placeholders are filled from a Hub row (``fields``), its option list, its metric names
and its FLAN v1 templates. Adding a task means adding a file, not a branch in the code.

A task file is checked once, when it is loaded (``TaskSpec.from_dict``): every key, type and
cross-reference (placeholders against ``fields``, option fields against ``options``, metrics against
what feeds them). A bad file is a one-line ``TaskError`` naming the file, the field and what to do,
never a traceback or a failure in the middle of a run.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

import yaml

from lora_lightning.errors import UserInputError
from lora_lightning.metrics import METRICS

TASKS_DIR = Path(__file__).parent / "tasks"
# Where a task gives each example field a metric may need (Metric.needs), and what to add when it does not.
FIELD_SOURCES: dict[str, tuple[Callable[[TaskSpec], bool], str]] = {
    "options": (
        lambda spec: spec.answer_field is not None,
        "options and a first template whose completion is just one option field "
        "(completion: '{answer}' with answer: {column: label, option: true})",
    ),
    "concepts": (
        lambda spec: spec.eval.concepts is not None,
        "eval.concepts, the column holding each example's concepts",
    ),
}
FIELD_SOURCES["answer"] = FIELD_SOURCES["options"]
OPTIONS_PLACEHOLDER = "options_"
TASK_KEYS = ("name", "description", "hub", "splits", "fields", "options", "metrics", "eval", "templates")
HUB_KEYS = ("path", "name")
SPLIT_NAMES = ("train", "validation", "test")
FIELD_KEYS = ("column", "index", "join", "option")
TEMPLATE_KEYS = ("prompt", "completion")
EXAMPLES = "see lora_lightning/data/tasks/*.yaml for examples"
BRACES = "write {{ and }} for literal braces"


class TaskError(UserInputError):
    """A task definition or a data row that cannot be used; the message names task and problem."""


def describe(value: Any) -> str:
    """A YAML value in words, for messages: ``a list``, ``a string ('x')``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        shown = repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
        return f"a string ({shown})" if value else "an empty string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def keys_text(keys: Any) -> str:
    return ", ".join(repr(k) for k in sorted(keys, key=str))


class Check:
    """Checks one task definition; every failure names ``where`` (the file, or the task) first."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, message: str) -> NoReturn:
        raise TaskError(f"{self.where}: {message}")

    def mapping(self, value: Any, key: str, hint: str) -> Mapping:
        """``value`` as a mapping (null: empty); ``key`` names it, ``hint`` says what it should hold."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(f"{key} must be a mapping ({hint}), got {describe(value)}")
        return value

    def only(self, value: Mapping, key: str, allowed: Sequence[str]) -> None:
        unknown = [k for k in value if k not in allowed]
        if unknown:
            self.fail(f"{key} has unknown key(s) {keys_text(unknown)}; it takes only {', '.join(allowed)}")

    def text(self, value: Any, key: str, what: str, optional: bool = True) -> str | None:
        """A non-empty string (or null when ``optional``)."""
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(f"{key} must be {what}{' or null' if optional else ''}, got {describe(value)}")
        return value

    def column(self, value: Any, key: str, optional: bool = False) -> str | None:
        """A source column: a name, or a dotted path into nested values (``answers.text``)."""
        what = "a column name (a dotted path such as answers.text for nested values)"
        column = self.text(value, key, what, optional)
        if column is not None and not all(part.strip() for part in column.split(".")):
            self.fail(f"{key} must be {what}, got {describe(value)}")
        return column


@dataclass(frozen=True)
class FieldSpec:
    """Where one template placeholder takes its value from in a source row.

    ``column`` may be a dotted path into nested dicts (``answers.text``). At most one transform:
    ``index`` picks one element of a list, ``join`` joins a list of strings, ``option`` maps a
    label (bool or int) to the text of that option.
    """

    column: str
    index: int | None = None
    join: str | None = None
    option: bool = False

    @classmethod
    def parse(cls, task: str, name: str, spec: Any, check: Check | None = None) -> FieldSpec:
        """The spec of field ``name``: a column name, or a mapping with ``column`` and at most one transform."""
        check = check or Check(f"task {task!r}")
        key = f"fields.{name}"
        if isinstance(spec, str):
            return cls(column=check.column(spec, key))
        shape = "a column name or a mapping with 'column' (and at most one of index, join, option)"
        if not isinstance(spec, Mapping):
            check.fail(f"{key} must be {shape}, got {describe(spec)}")
        if "column" not in spec:
            check.fail(f"{key} has no 'column'; it must be {shape}")
        check.only(spec, key, FIELD_KEYS)
        index, join, option = spec.get("index"), spec.get("join"), spec.get("option", False)
        if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
            check.fail(f"{key}.index must be a list position (0, 1, ...), got {describe(index)}")
        if join is not None and not isinstance(join, str):
            check.fail(f"{key}.join must be the string that joins the list's items (e.g. ', '), got {describe(join)}")
        if not isinstance(option, bool):
            check.fail(f"{key}.option must be true or false, got {describe(option)}")
        if (index is not None) + (join is not None) + option > 1:
            check.fail(f"{key} may use only one of index, join, option")
        return cls(column=check.column(spec["column"], f"{key}.column"), index=index, join=join, option=option)

    @property
    def root_column(self) -> str:
        return self.column.split(".")[0]


@dataclass(frozen=True)
class EvalSpec:
    """How a task is scored (the ``eval`` block of its YAML).

    ``references``: a column holding a list of acceptable completions (squad ``answers.text``).
    ``group_by``: rows sharing this column are one example whose references are all their
    completions (common_gen ``concept_set_idx``). ``concepts``: the column of concepts whose
    coverage is measured. ``max_new_tokens``: generation budget for this task.
    """

    max_new_tokens: int = 64
    references: str | None = None
    group_by: str | None = None
    concepts: str | None = None


@dataclass(frozen=True)
class Template:
    prompt: str
    completion: str


@dataclass(frozen=True)
class TaskSpec:
    """One instruction task: source, fields, options, metrics and templates."""

    name: str
    description: str
    hub_path: str | None
    hub_name: str | None
    splits: Mapping[str, str | None]
    fields: Mapping[str, FieldSpec]
    templates: Sequence[Template]
    options: Sequence[str] | None = None
    option_columns: Sequence[str] | None = None
    metrics: Sequence[str] = field(default_factory=tuple)
    eval: EvalSpec = field(default_factory=EvalSpec)

    @property
    def columns(self) -> list[str]:
        """The source columns a row must have."""
        cols = {f.root_column for f in self.fields.values()}
        cols.update(self.option_columns or ())
        return sorted(cols)

    @classmethod
    def from_dict(cls, raw: Any, source: str | None = None) -> TaskSpec:
        """A checked task from its YAML mapping; ``source`` (the file) is named in every error."""
        name = raw.get("name") if isinstance(raw, Mapping) else None
        check = Check(
            f"task file {source!r}"
            if source is not None
            else f"task {name!r}"
            if isinstance(name, str) and name.strip()
            else "task definition"
        )
        if not isinstance(raw, Mapping):
            check.fail(
                f"the file must hold a mapping of keys ({', '.join(TASK_KEYS)}), got {describe(raw)}; {EXAMPLES}"
            )
        check.only(raw, "the task", TASK_KEYS)
        if "name" not in raw:
            check.fail("'name' is missing; give the task a name (name: my_task)")
        name = check.text(raw["name"], "'name'", "a non-empty string (the task's name)", optional=False)
        description = raw.get("description")
        if description is not None and not isinstance(description, str):
            check.fail(f"'description' must be a string, got {describe(description)}")
        hub = check.mapping(raw.get("hub"), "'hub'", "path: <Hub dataset id>, name: <config or null>")
        check.only(hub, "'hub'", HUB_KEYS)
        hub_path = check.text(hub.get("path"), "hub.path", "a Hub dataset id (owner/name)")
        hub_name = check.text(hub.get("name"), "hub.name", "a dataset config name")
        splits = check.mapping(raw.get("splits"), "'splits'", "train/validation/test: <Hub split name or null>")
        check.only(splits, "'splits'", SPLIT_NAMES)
        splits = {k: check.text(v, f"splits.{k}", "a Hub split name") for k, v in splits.items()}

        fields = {}
        for key, spec in check.mapping(
            raw.get("fields"), "'fields'", "placeholder: <column> for each {placeholder} of the templates"
        ).items():
            if not isinstance(key, str) or not key.isidentifier():
                check.fail(
                    f"fields: {key!r} cannot be a placeholder name; use letters, digits and _ "
                    "(it is written {name} in templates)"
                )
            if key == OPTIONS_PLACEHOLDER:
                check.fail(f"fields: {key!r} is reserved for the option block; rename the field")
            fields[key] = FieldSpec.parse(name, key, spec, check)

        options, option_columns = parse_options(check, raw.get("options"))
        for key, spec in fields.items():
            if spec.option and options is None and option_columns is None:
                check.fail(
                    f"fields.{key} maps labels to options (option: true) but the task has no 'options'; "
                    "add options: [...] (or options: {columns: [...]}) or drop option: true"
                )

        metrics = raw.get("metrics")
        if metrics is None:
            metrics = []
        if not isinstance(metrics, list):
            check.fail(
                f"'metrics' must be a list of metric names (e.g. [rouge_l]), got {describe(metrics)}; "
                f"known: {', '.join(METRICS)}"
            )
        for i, metric in enumerate(metrics):
            if not isinstance(metric, str):
                check.fail(f"metrics[{i}] must be a metric name, got {describe(metric)}; known: {', '.join(METRICS)}")
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            check.fail(f"'metrics' names unknown metric(s) {keys_text(unknown)}; known: {', '.join(METRICS)}")
        eval_spec = parse_eval(name, raw.get("eval"), check)

        templates = raw.get("templates")
        if not isinstance(templates, list) or not templates:
            check.fail(
                f"'templates' must be a non-empty list of {{prompt, completion}} mappings, "
                f"got {describe(templates) if 'templates' in raw else 'nothing'}; {EXAMPLES}"
            )
        has_options = options is not None or option_columns is not None
        templates = [parse_template(check, i, t, fields, has_options) for i, t in enumerate(templates)]

        spec = cls(
            name=name,
            description=description or "",
            hub_path=hub_path,
            hub_name=hub_name,
            splits=splits,
            fields=fields,
            templates=templates,
            options=options,
            option_columns=option_columns,
            metrics=tuple(metrics),
            eval=eval_spec,
        )
        for metric in spec.metrics:
            for needed in METRICS[metric].needs:
                gives, what = FIELD_SOURCES[needed]
                if not gives(spec):
                    check.fail(f"metric {metric!r} needs {what}; add them or drop {metric!r} from metrics")
        return spec

    # -- turning a source row into text ---------------------------------------------------------

    def row_options(self, row: Mapping[str, Any]) -> list[str] | None:
        if self.option_columns is not None:
            return [str(row[c]) for c in self.option_columns]
        return list(self.options) if self.options is not None else None

    def column_value(self, row: Mapping[str, Any], column: str) -> Any:
        """A row's value at ``column``, a dotted path into nested dicts."""
        value: Any = row
        for part in column.split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise TaskError(f"task {self.name!r}: row has no column {column!r}")
            value = value[part]
        return value

    def field_value(self, name: str, row: Mapping[str, Any], options: list[str] | None) -> str:
        spec = self.fields[name]
        value = self.column_value(row, spec.column)
        if spec.index is not None:
            if not isinstance(value, (list, tuple)) or len(value) <= spec.index:
                raise TaskError(f"task {self.name!r}: column {spec.column!r} has no element {spec.index}")
            value = value[spec.index]
        elif spec.join is not None:
            if not isinstance(value, (list, tuple)):
                raise TaskError(f"task {self.name!r}: column {spec.column!r} must be a list to join")
            value = spec.join.join(str(v) for v in value)
        elif spec.option:
            label = int(value) if isinstance(value, (bool, int)) or str(value).lstrip("-").isdigit() else None
            if options is None or label is None or not 0 <= label < len(options):
                raise TaskError(
                    f"task {self.name!r}: label {value!r} in column {spec.column!r} "
                    f"is outside the option list {options}"
                )
            value = options[label]
        return str(value)

    def format(self, row: Mapping[str, Any], template_index: int) -> tuple[str, str]:
        """Fill one template with one row: (prompt, completion)."""
        template = self.templates[template_index]
        options = self.row_options(row)
        values = {name: self.field_value(name, row, options) for name in self.fields}
        if options is not None:
            values[OPTIONS_PLACEHOLDER] = format_options(options)
        return template.prompt.format(**values), template.completion.format(**values)

    # -- evaluation ------------------------------------------------------------------------------

    @property
    def eval_templates(self) -> list[int]:
        """Templates scored in evaluation: those completing with the task's main target (the first
        template's completion), so a summary is never scored against a "write an article" output."""
        main = self.templates[0].completion
        return [i for i, t in enumerate(self.templates) if t.completion == main]

    @property
    def answer_field(self) -> str | None:
        """The option-mapped field the main completion names, for classification tasks; else None."""
        names = [p for _, p, _, _ in string.Formatter().parse(self.templates[0].completion) if p]
        if len(names) == 1 and names[0] in self.fields and self.fields[names[0]].option:
            return names[0]
        return None

    def answer_index(self, row: Mapping[str, Any]) -> int:
        return int(self.column_value(row, self.fields[self.answer_field].column))

    def format_random(self, row: Mapping[str, Any], seed: int, index: int) -> tuple[str, str]:
        """Fill a template drawn for this example by a RNG seeded with (seed, task, index).

        Seeding per example (not one stream for the whole set) keeps the draw independent of
        caps, shuffling and worker order.
        """
        rng = random.Random(f"{seed}:{self.name}:{index}")
        return self.format(row, rng.randrange(len(self.templates)))


def parse_eval(task: str, raw: Any, check: Check | None = None) -> EvalSpec:
    """The ``eval`` block: a mapping of EvalSpec's keys, each checked."""
    check = check or Check(f"task {task!r}")
    known = list(EvalSpec.__dataclass_fields__)
    raw = check.mapping(raw, "'eval'", f"any of {', '.join(known)}")
    check.only(raw, "'eval'", known)
    tokens = raw.get("max_new_tokens", EvalSpec.max_new_tokens)
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens <= 0:
        check.fail(
            f"eval.max_new_tokens must be a positive whole number (tokens generated per evaluation example), "
            f"got {describe(tokens)}"
        )
    columns = {
        key: check.column(raw.get(key), f"eval.{key}", optional=True) for key in ("references", "group_by", "concepts")
    }
    return EvalSpec(max_new_tokens=tokens, **columns)


def parse_options(check: Check, raw: Any) -> tuple[list[str] | None, list[str] | None]:
    """(options, option_columns): a fixed option list, or the columns holding each row's options."""
    shape = 'a list of option texts (e.g. ["no", "yes"]), a mapping {columns: [<column>, ...]}, or null'
    if raw is None:
        return None, None
    if isinstance(raw, Mapping):
        check.only(raw, "'options'", ("columns",))
        columns = raw.get("columns")
        if not isinstance(columns, list) or not columns:
            check.fail(
                f"options.columns must be a non-empty list of the columns holding each row's options, "
                f"got {describe(columns) if 'columns' in raw else 'nothing'}"
            )
        return None, [check.column(c, f"options.columns[{i}]") for i, c in enumerate(columns)]
    if not isinstance(raw, list) or not raw:
        check.fail(f"'options' must be {shape}; got {describe(raw)}")
    for i, option in enumerate(raw):
        if option is None or not isinstance(option, (str, int, float)):
            check.fail(f"options[{i}] must be an option text, got {describe(option)}; 'options' must be {shape}")
    return [str(o) for o in raw], None


def parse_template(check: Check, i: int, raw: Any, fields: Mapping[str, FieldSpec], has_options: bool) -> Template:
    """Template ``i``: a {prompt, completion} mapping whose placeholders the task can fill."""
    key = f"templates[{i}]"
    if not isinstance(raw, Mapping):
        check.fail(
            f"{key} must be a mapping with prompt and completion ({{prompt: '...', completion: '...'}}), "
            f"got {describe(raw)}"
        )
    for part in TEMPLATE_KEYS:
        if part not in raw:
            check.fail(f"{key} has no {part!r}; each template needs prompt and completion")
    check.only(raw, key, TEMPLATE_KEYS)
    values = {name: "x" for name in fields}
    values[OPTIONS_PLACEHOLDER] = "x"
    for part in TEMPLATE_KEYS:
        text, where = raw[part], f"{key}.{part}"
        if not isinstance(text, str) or not text:
            quote = "; quote it: unquoted {...} is a YAML mapping" if isinstance(text, Mapping) else ""
            check.fail(f"{where} must be a non-empty string, got {describe(text)}{quote}")
        try:
            placeholders = [ph for _, ph, _, _ in string.Formatter().parse(text) if ph is not None]
        except ValueError as err:
            check.fail(f"{where} is not a valid template ({err}); placeholders are {{field}}, {BRACES}")
        for ph in placeholders:
            if ph == OPTIONS_PLACEHOLDER:
                if not has_options:
                    check.fail(
                        f"{where} uses {{options_}} but the task has no 'options'; add options or remove {{options_}}"
                    )
            elif ph not in fields:
                check.fail(
                    f"{where} uses {{{ph}}}, which is not in 'fields'; add it to fields or fix the "
                    f"placeholder ({BRACES})"
                )
        try:
            text.format(**values)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as err:
            check.fail(
                f"{where} cannot be filled ({err}); placeholders take no format spec or conversion: "
                f"write {{field}}, and {BRACES}"
            )
    return Template(raw["prompt"], raw["completion"])


def format_options(options: Sequence[str]) -> str:
    """FLAN's option block: ``OPTIONS:`` then one ``- option`` line each."""
    return "OPTIONS:\n" + "\n".join(f"- {o}" for o in options)


@cache
def builtin_task_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in TASKS_DIR.glob("*.yaml")))


def load_task(name_or_path: str) -> TaskSpec:
    """A built-in task by name, or a user task from a YAML file path."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise TaskError(f"a task must be a task name or the path of a task .yaml file, got {describe(name_or_path)}")
    if name_or_path.endswith((".yaml", ".yml")):
        path, shown = Path(name_or_path), name_or_path
        if not path.is_file():
            raise TaskError(f"task file {shown!r} does not exist")
    else:
        path = TASKS_DIR / f"{name_or_path}.yaml"
        shown = str(path)
        if not path.is_file():
            raise TaskError(
                f"unknown task {name_or_path!r}; known tasks: {', '.join(builtin_task_names())} "
                "(or give the path of a task .yaml file)"
            )
    where = f"task file {shown!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TaskError(f"{where} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise TaskError(f"{where} cannot be read ({err.strerror or type(err).__name__})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise TaskError(
            f"{where} is not valid YAML{at}: {problem}; fix the syntax there (quote text that "
            "starts with { or holds ': ')"
        ) from None
    if raw is None:
        raise TaskError(
            f"{where} is empty; a task file is a mapping with at least name, fields and templates ({EXAMPLES})"
        )
    return TaskSpec.from_dict(raw, source=shown)
