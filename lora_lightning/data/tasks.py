"""The task registry: what each instruction task is, as data.

Every task is one YAML file in ``lora_lightning/data/tasks/``: its Hub dataset id and split names,
how template placeholders are filled from a Hub row (``fields``), its option list, its metric names
and its FLAN v1 templates. Adding a task means adding a file, not a branch in the code.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from lora_lightning.errors import UserInputError

TASKS_DIR = Path(__file__).parent / "tasks"
METRIC_NAMES = ("accuracy", "rouge_l", "coverage", "exact_match", "f1", "sacrebleu")
OPTIONS_PLACEHOLDER = "options_"


class TaskError(UserInputError):
    """A task definition or a data row that cannot be used; the message names task and problem."""


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
    def parse(cls, task: str, name: str, spec: Any) -> "FieldSpec":
        if isinstance(spec, str):
            return cls(column=spec)
        if not isinstance(spec, Mapping) or "column" not in spec:
            raise TaskError(f"task {task!r}: field {name!r} must be a column name or a mapping with 'column'")
        unknown = set(spec) - {"column", "index", "join", "option"}
        if unknown:
            raise TaskError(f"task {task!r}: field {name!r} has unknown keys {sorted(unknown)}")
        made = cls(column=spec["column"], index=spec.get("index"), join=spec.get("join"),
                   option=bool(spec.get("option", False)))
        if sum(x is not None and x is not False for x in (made.index, made.join, made.option or None)) > 1:
            raise TaskError(f"task {task!r}: field {name!r} may use only one of index, join, option")
        return made

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
    def from_dict(cls, raw: Mapping[str, Any]) -> "TaskSpec":
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise TaskError("a task definition needs a non-empty 'name'")
        hub = raw.get("hub") or {}
        fields = {k: FieldSpec.parse(name, k, v) for k, v in (raw.get("fields") or {}).items()}
        templates = [Template(str(t["prompt"]), str(t["completion"])) for t in raw.get("templates") or []]
        if not templates:
            raise TaskError(f"task {name!r}: needs at least one template")
        options = raw.get("options")
        option_columns = None
        if isinstance(options, Mapping):
            option_columns = list(options["columns"])
            options = None
        elif options is not None:
            options = [str(o) for o in options]
        spec = cls(name=name, description=str(raw.get("description", "")), hub_path=hub.get("path"),
                   hub_name=hub.get("name"), splits=dict(raw.get("splits") or {}), fields=fields,
                   templates=templates, options=options, option_columns=option_columns,
                   metrics=tuple(raw.get("metrics") or ()), eval=parse_eval(name, raw.get("eval")))
        spec._check_placeholders()
        unknown = set(spec.metrics) - set(METRIC_NAMES)
        if unknown:
            raise TaskError(f"task {name!r}: unknown metric(s) {sorted(unknown)}; known: {', '.join(METRIC_NAMES)}")
        if "accuracy" in spec.metrics and spec.answer_field is None:
            raise TaskError(f"task {name!r}: accuracy needs options and a first template completing with an option field")
        return spec

    def _check_placeholders(self) -> None:
        for i, t in enumerate(self.templates):
            for text in (t.prompt, t.completion):
                for _, ph, _, _ in string.Formatter().parse(text):
                    if ph is None:
                        continue
                    if ph == OPTIONS_PLACEHOLDER:
                        if self.options is None and self.option_columns is None:
                            raise TaskError(f"task {self.name!r}: template {i} uses {{options_}} but the task has no options")
                    elif ph not in self.fields:
                        raise TaskError(f"task {self.name!r}: template {i} uses {{{ph}}}, which is not in 'fields'")

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
                raise TaskError(f"task {self.name!r}: label {value!r} in column {spec.column!r} "
                                f"is outside the option list {options}")
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


def parse_eval(task: str, raw: Any) -> EvalSpec:
    known = set(EvalSpec.__dataclass_fields__)
    if raw is not None and (not isinstance(raw, Mapping) or set(raw) - known):
        raise TaskError(f"task {task!r}: 'eval' takes only {', '.join(sorted(known))}")
    return EvalSpec(**(raw or {}))


def format_options(options: Sequence[str]) -> str:
    """FLAN's option block: ``OPTIONS:`` then one ``- option`` line each."""
    return "OPTIONS:\n" + "\n".join(f"- {o}" for o in options)


@lru_cache(maxsize=None)
def builtin_task_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in TASKS_DIR.glob("*.yaml")))


def load_task(name_or_path: str) -> TaskSpec:
    """A built-in task by name, or a user task from a YAML file path."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise TaskError(f"task file {name_or_path!r} does not exist")
    else:
        path = TASKS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise TaskError(f"unknown task {name_or_path!r}; known tasks: {', '.join(builtin_task_names())} "
                            "(or give the path of a task .yaml file)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TaskError(f"task file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, Mapping):
        raise TaskError(f"task file {str(path)!r} must hold a mapping")
    return TaskSpec.from_dict(raw)
