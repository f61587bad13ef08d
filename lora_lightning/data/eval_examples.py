"""Held-out evaluation examples: a prompt, its reference(s), and what the metrics need.

One example per row, or per group of rows (common_gen: a concept set with all its reference
sentences). The template is drawn, seeded, among the task's evaluation templates; with ``shots``
> 0, that many training examples in the same template are prepended (the original project's
1-shot runs).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypedDict

from lora_lightning.data.tasks import TaskSpec

SHOT_SEPARATOR = "\n\n"


class EvalExample(TypedDict, total=False):
    """One held-out evaluation example, as the metrics and the scorer read it.

    ``options``/``answer`` are set for tasks with answer options (scored by rank), ``concepts`` for
    concept-to-sentence tasks; the pipeline adds ``eval_id`` (unique per task), ``split`` (where
    its row came from) and ``unseen`` (a task never trained on).
    """

    task: str
    max_new_tokens: int
    prompt: str
    reference: str
    references: list[str]
    options: list[str] | None
    answer: int | None
    concepts: list[str] | None
    eval_id: str
    split: str
    unseen: bool


def group_rows(task: TaskSpec, rows: Sequence[dict]) -> list[list[dict]]:
    if task.eval.group_by is None:
        return [[row] for row in rows]
    groups: dict[Any, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(task.column_value(row, task.eval.group_by)), []).append(row)
    return list(groups.values())


def build_eval_examples(
    task: TaskSpec, rows: Sequence[dict], limit: int | None, seed: int, shots: int = 0, shot_rows: Sequence[dict] = ()
) -> list[EvalExample]:
    """Evaluation examples for one task from its held-out rows (already in a seeded order)."""
    groups = group_rows(task, rows)[:limit]
    templates = task.eval_templates
    examples: list[EvalExample] = []
    for i, group in enumerate(groups):
        rng = random.Random(f"{seed}:{task.name}:eval:{i}")
        template = rng.choice(templates)
        row = group[0]
        prompt, completion = task.format(row, template)
        if task.eval.references:
            references = [str(r) for r in task.column_value(row, task.eval.references)]
        else:
            references = list(dict.fromkeys(task.format(r, template)[1] for r in group))
        if shots:
            exemplars = rng.sample(list(shot_rows), min(shots, len(shot_rows)))
            prompt = (
                SHOT_SEPARATOR.join("\n".join(task.format(r, template)) for r in exemplars) + SHOT_SEPARATOR + prompt
            )
        examples.append(
            EvalExample(
                task=task.name,
                max_new_tokens=task.eval.max_new_tokens,
                prompt=prompt,
                reference=completion,
                references=references,
                options=task.row_options(row) if task.answer_field else None,
                answer=task.answer_index(row) if task.answer_field else None,
                concepts=[str(c) for c in task.column_value(row, task.eval.concepts)] if task.eval.concepts else None,
            )
        )
    return examples
