"""The project's tasks as EleutherAI lm-evaluation-harness tasks, over a run's own evaluation rows.

``lora-lightning lm-eval-tasks OUT_DIR --config ...`` writes, per task, ``<task>.jsonl`` (the rows
``lora-lightning test`` scores: same split, same templates, same order) and ``<task>.yaml``, plus a
group ``lora_lightning`` and ``lora_lightning_metrics.py``; then any model is scored on them with

    lm_eval --model hf --model_args pretrained=BASE,peft=ADAPTER --include_path OUT_DIR --tasks lora_lightning

Each row carries its prompt already laid out as the run lays it out (``plain``: the FLAN text and a
newline; ``chat``: the run tokenizer's chat template up to the assistant turn), so the harness
scores exactly what the project trained and tests on:

* classification tasks are ``multiple_choice``: each option, as the trained completion followed by
  the tokenizer's end-of-text, scored by its log-likelihood after the prompt: FLAN's rank
  classification, so ``acc`` equals ``lora-lightning test``'s ``accuracy_rank``. (The harness
  moves the prompt's trailing newline in front of each option; one token, the same for every
  option, so the ranking does not change.) Pass ``max_length`` = ``data.max_length`` - 1 in
  ``--model_args`` for the same left cut of prompts that are too long.
* generation tasks are ``generate_until`` (greedy, stop at end-of-text, the task's token budget)
  with ``rougeL``: rouge-score's stemmed ROUGE-L F1, best over the references, times 100, as
  :func:`~lora_lightning.evaluation.metrics.rouge_l` computes it.

``lora_lightning_metrics.py`` needs only ``rouge-score`` (an lm-eval dependency), not this project.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lora_lightning.atomic_write import atomic_folder
from lora_lightning.prompts import render_completion, render_prompt

GROUP = "lora_lightning"
METRICS_MODULE = "lora_lightning_metrics"

METRICS_SOURCE = '''"""ROUGE-L for the lora_lightning harness tasks: rouge-score, stemmed, best reference, x100."""

from rouge_score import rouge_scorer

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def process_results(doc, results):
    prediction = results[0].strip()
    return {"rougeL": 100 * max(_SCORER.score(ref, prediction)["rougeL"].fmeasure for ref in doc["references"])}
'''


def task_name(task: str) -> str:
    return f"{GROUP}_{task}"


def harness_rows(examples: Sequence[dict], tokenizer: Any, prompt_format: str) -> list[dict]:
    """The rows a harness task reads: the laid-out prompt, the choices as trained completions
    (classification), the references (generation)."""
    eos = tokenizer.eos_token or ""
    rows = []
    for e in examples:
        row = {"context": render_prompt(tokenizer, e["prompt"], prompt_format), "references": e["references"]}
        if e["options"]:
            completions = [render_completion(tokenizer, e["prompt"], o, prompt_format) for o in e["options"]]
            row["choices"] = [c if c.endswith(eos) else c + eos for c in completions]
            row["label"] = e["answer"]
        rows.append(row)
    return rows


def task_config(task: str, data_file: Path, example: Mapping[str, Any], eos: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "task": task_name(task),
        "tag": [GROUP],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
        "test_split": "test",
        "doc_to_text": "{{context}}",
        "target_delimiter": "",
        "metadata": {"version": 1.0},
    }
    if example["options"]:
        config.update(
            output_type="multiple_choice",
            doc_to_choice="{{choices}}",
            doc_to_target="{{label}}",
            metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        )
    else:
        config.update(
            output_type="generate_until",
            doc_to_target="{{references[0]}}",
            generation_kwargs={
                "until": [eos] if eos else [],
                "max_gen_toks": example["max_new_tokens"],
                "do_sample": False,
            },
            metric_list=[{"metric": "rougeL", "aggregation": "mean", "higher_is_better": True}],
        )
    return config


def write_harness_tasks(
    out_dir: str | Path, examples: Mapping[str, Sequence[dict]], tokenizer: Any, prompt_format: str
) -> list[str]:
    """Writes the task folder (replacing ``out_dir`` whole, atomically); returns the harness task names."""
    out = Path(out_dir).resolve()
    names = []
    with atomic_folder(out) as tmp:
        for task, task_examples in examples.items():
            if not task_examples:
                continue
            with open(tmp / f"{task}.jsonl", "w", encoding="utf-8") as f:
                for row in harness_rows(task_examples, tokenizer, prompt_format):
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            config = task_config(task, out / f"{task}.jsonl", task_examples[0], tokenizer.eos_token or "")
            text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000)
            if config["output_type"] == "generate_until":
                text += f"process_results: !function {METRICS_MODULE}.process_results\n"
            (tmp / f"{task}.yaml").write_text(text, encoding="utf-8")
            names.append(config["task"])
        (tmp / f"{METRICS_MODULE}.py").write_text(METRICS_SOURCE, encoding="utf-8")
    return names
