"""The project's tasks as EleutherAI lm-evaluation-harness tasks, over a run's own evaluation rows.

``lora-lightning lm-eval-tasks OUT_DIR --config ...`` writes, per task, ``<task>.jsonl`` (the rows
``lora-lightning test`` scores: same split, same templates, same order) and ``<task>.yaml``, plus a
group ``lora_lightning`` and ``lora_lightning_metrics.py``; then any model is scored on them with

    lm_eval --model hf --model_args pretrained=BASE,peft=ADAPTER,add_bos_token=False,max_length=N-1 \\
        --include_path OUT_DIR --tasks lora_lightning

where ``N`` is the run's ``data.max_length``. Each row's text is chosen so that the harness, which
tokenizes text alone under ``add_bos_token=False``, sees the very token ids training and ``test``
see:

* ``context`` is the prompt as the run lays it out (``plain``: the FLAN text and a newline;
  ``chat``: the tokenizer's chat template up to the assistant turn), preceded in ``plain`` format
  by the text of the special tokens the tokenizer adds (Llama's ``<s>``: training tokenizes a plain
  prompt with the tokenizer's special tokens, a chat prompt without, its template writing its own).
* classification tasks are ``multiple_choice``; each choice is the trained completion cut as
  :func:`~lora_lightning.data.tokenization.end_with_eos` cuts its ids: up to and including its
  last end-of-text (a chat turn's ``True<|im_end|>``, without the template's newline after it), or
  with end-of-text appended (plain text). The harness tokenizes ``context + choice`` whole and
  scores the ids after the context with its trailing whitespace removed: the training ids exactly,
  whose log-likelihood is the completion's plus that of the prompt's last token (the newline
  before the answer), the same for every option, so ``acc`` equals ``lora-lightning test``'s
  ``accuracy_rank`` (FLAN's rank classification).
* generation tasks are ``generate_until`` (greedy, stop at end-of-text, the task's token budget)
  with ``rougeL``: rouge-score's stemmed ROUGE-L F1, best over the references, times 100, as
  :func:`~lora_lightning.metrics.rouge_l` computes it.

Without ``add_bos_token=False``, lm-eval 0.4.13 lets the tokenizer add its special tokens to a
context that does not start with BOS: one BOS too many for a chat prompt of a tokenizer that adds
BOS while its template writes none (older releases add none by default: the same ids as with it).

``max_length`` = N - 1 makes the harness keep, like training, the last N ids of an option row. A
row longer than that is cut differently: the harness cuts ids from the start, training keeps the
leading special tokens (``plain``) or the template's turns (``chat``). A generation prompt is cut
at N - 1 minus the task's token budget, one id fewer than ``test``. The export checks every option:
where a tokenizer splits the whole text differently from prompt and completion apart (whitespace
that merges across the boundary), it logs how many options differ.

``lora_lightning_metrics.py`` needs only ``rouge-score`` (an lm-eval dependency), not this project.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lora_lightning.atomic_write import atomic_folder
from lora_lightning.data.tokenization import IGNORE_INDEX, choice_text, encode_pairs
from lora_lightning.prompts import render_completion, render_prompt

log = logging.getLogger(__name__)

GROUP = "lora_lightning"
METRICS_MODULE = "lora_lightning_metrics"
NO_CUT = 1 << 30  # a max_length no row reaches

METRICS_SOURCE = '''"""ROUGE-L for the lora_lightning harness tasks: rouge-score, stemmed, best reference, x100."""

from rouge_score import rouge_scorer

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def process_results(doc, results):
    prediction = results[0].strip()
    return {"rougeL": 100 * max(_SCORER.score(ref, prediction)["rougeL"].fmeasure for ref in doc["references"])}
'''


def task_name(task: str) -> str:
    return f"{GROUP}_{task}"


def added_special_text(tokenizer: Any, with_specials: Sequence[int], text_ids: Sequence[int]) -> tuple[str, str]:
    """The text of the special tokens a tokenizer adds around a text's own ids (Llama's ``<s>`` in
    front), as (before, after); the harness reads them back as those special tokens."""
    n = len(text_ids)
    for lead in range(len(with_specials) - n + 1):
        if list(with_specials[lead : lead + n]) == list(text_ids):
            before, after = with_specials[:lead], with_specials[lead + n :]
            return "".join(tokenizer.convert_ids_to_tokens(before)), "".join(tokenizer.convert_ids_to_tokens(after))
    return "", ""


def contexts(tokenizer: Any, prompts: Sequence[str], prompt_format: str) -> list[str]:
    """Each prompt laid out as training lays it out, with the text of the special tokens training
    lets the tokenizer add (``plain`` only: a chat template writes its own)."""
    heads = [render_prompt(tokenizer, p, prompt_format) for p in prompts]
    if prompt_format != "plain" or not heads:
        return heads
    with_specials = tokenizer(heads)["input_ids"]
    text_ids = tokenizer(heads, add_special_tokens=False)["input_ids"]
    texts = []
    for head, full, bare in zip(heads, with_specials, text_ids):
        before, after = added_special_text(tokenizer, full, bare)
        texts.append(before + head + after)
    return texts


def harness_split_differs(tokenizer: Any, context: str, choice: str, trained: Sequence[int], prompt_len: int) -> bool:
    """Whether the harness, tokenizing ``context + choice`` whole (text only) and scoring what follows
    the context's ids with trailing whitespace removed, sees other ids than training, or scores part
    of the completion as context."""
    whole = tokenizer(context + choice, add_special_tokens=False)["input_ids"]
    split = len(tokenizer(context.rstrip(), add_special_tokens=False)["input_ids"])
    return whole != list(trained) or split > prompt_len


def options_differ(tokenizer: Any, example: dict, context: str, choices: Sequence[str], prompt_format: str) -> int:
    """How many of an example's options the harness would see with other ids than training (the
    training ids uncut: a cut prompt differs anyway, see the module docstring)."""
    prompts = [example["prompt"]] * len(choices)
    trained = encode_pairs(tokenizer, prompts, example["options"], NO_CUT, prompt_format)
    return sum(
        pair is None
        or harness_split_differs(tokenizer, context, choice, pair.input_ids, pair.labels.count(IGNORE_INDEX))
        for choice, pair in zip(choices, trained)
    )


def harness_rows(examples: Sequence[dict], tokenizer: Any, prompt_format: str) -> list[dict]:
    """The rows a harness task reads: the context as training's ids spelled out, the choices as trained
    completions (classification), the references (generation). Logs how many options a harness
    would tokenize differently from training (see the module docstring)."""
    eos = tokenizer.eos_token or ""
    texts = contexts(tokenizer, [e["prompt"] for e in examples], prompt_format)
    rows, differ, options = [], 0, 0
    for e, context in zip(examples, texts):
        row = {"context": context, "references": e["references"]}
        if e["options"]:
            completions = [render_completion(tokenizer, e["prompt"], o, prompt_format) for o in e["options"]]
            row["choices"] = [choice_text(c, eos) for c in completions]
            row["label"] = e["answer"]
            differ += options_differ(tokenizer, e, context, row["choices"], prompt_format)
            options += len(row["choices"])
        rows.append(row)
    if differ:
        log.warning(
            "%s: the harness tokenizes %d of %d options differently from training (the tokenizer splits "
            "prompt and answer text together differently); its acc may differ from accuracy_rank",
            examples[0]["task"],
            differ,
            options,
        )
    return rows


def task_config(task: str, data_file: Path, example: Mapping[str, Any], eos: str) -> dict[str, Any]:
    """A task's YAML: the row's context as it is and each choice right after it (no delimiter: the
    rows already carry the training text), or greedy generation until end-of-text."""
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
            metric_list=[
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
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
    out_dir: str | Path,
    examples: Mapping[str, Sequence[dict]],
    tokenizer: Any,
    prompt_format: str,
    overwrite: bool = False,
) -> list[str]:
    """Writes the task folder (replacing ``out_dir`` whole, atomically); returns the harness task names.
    A non-empty ``out_dir`` this project did not write is refused unless ``overwrite``
    (:func:`~lora_lightning.atomic_write.check_writable_folder`)."""
    out = Path(out_dir).resolve()
    names = []
    with atomic_folder(out, overwrite) as tmp:
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
