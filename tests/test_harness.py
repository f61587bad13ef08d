"""lm-evaluation-harness, both ways, offline: an exported adapter scored by plain `lm_eval --model hf
... peft=ADAPTER`, on the tasks `lora-lightning lm-eval-tasks` writes. The harness must score the
very ids `lora-lightning test` scores: with a tokenizer that adds BOS (plain format) and one whose
chat template ends the assistant turn with end-of-turn and a newline (chat format), every option's
ids equal the training ids (lm_eval's own pair encoding), each option's log-likelihood margin
equals the project's, and the harness's bool_q `acc` equals `accuracy_rank` on the same rows."""

import csv
import json
import logging
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, build_model, build_tokenizer, run_cli

from lora_lightning import FlanDataModule
from lora_lightning.cli import build_cli
from lora_lightning.data.tokenization import IGNORE_INDEX, encode_pairs
from lora_lightning.evaluation.harness import harness_rows
from lora_lightning.loading import ModelLoadError, embedded_gguf_path
from lora_lightning.model.adapters import load_lora_model
from lora_lightning.model.scoring import completion_nll

pytestmark = pytest.mark.slow
lm_eval = pytest.importorskip("lm_eval", reason="the lm-eval extra is not installed: pip install -e '.[lm-eval]'")
from lm_eval.models.huggingface import HFLM  # noqa: E402 - only once lm_eval is known to be installed

CONFIG = str(REPO / "configs" / "default.yaml")
MAX_LENGTH = 256
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def llama_chat_tokenizer():
    """The tiny tokenizer made Llama- and ChatML-like: it adds ``<s>`` in front of text, its EOS is
    ``<|im_end|>``, and its chat template ends the assistant turn ``<|im_end|>\\n`` and writes no BOS."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer().backend_tokenizer,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        add_bos_token=True,
    )
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny Llama with the BOS-adding chat tokenizer, saved as a user would have it."""
    folder = tmp_path_factory.mktemp("llama_chat")
    tokenizer = llama_chat_tokenizer()
    assert tokenizer("Yes")["input_ids"][0] == tokenizer.bos_token_id  # the premise: it adds BOS
    build_model("llama", len(tokenizer), tokenizer.eos_token_id).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def bool_q_examples(model_folder, prompt_format: str) -> list[dict]:
    folder = str(model_folder)
    data = FlanDataModule(
        tasks=["bool_q"], tokenizer=folder, cache_dir=None, max_length=MAX_LENGTH, prompt_format=prompt_format
    )
    data.load_tokenizer()
    return data.eval_examples(limit=12)["bool_q"]


def harness_lm(tokenizer):
    """lm_eval's own HF model wrapper, as ``--model_args ...,add_bos_token=False`` builds it, on a tiny model."""
    return HFLM(
        pretrained=build_model("llama", len(tokenizer), tokenizer.eos_token_id),
        tokenizer=tokenizer,
        add_bos_token=False,
        device="cpu",
        batch_size=1,
    )


def assert_harness_scores_training_ids(tokenizer, examples, prompt_format):
    """For every option: lm_eval's context + continuation ids are the training ids, and its
    continuation is the trained completion after the prompt's last token (the newline before the answer)."""
    lm = harness_lm(tokenizer)
    for example, row in zip(examples, harness_rows(examples, tokenizer, prompt_format), strict=True):
        prompts = [example["prompt"]] * len(example["options"])
        trained = encode_pairs(tokenizer, prompts, example["options"], 1 << 30, prompt_format)
        for choice, pair in zip(row["choices"], trained, strict=True):
            context_ids, continuation_ids = lm._encode_pair(row["context"], choice)
            completion = [t for t in pair.labels if t != IGNORE_INDEX]
            assert context_ids + continuation_ids == pair.input_ids
            assert continuation_ids[1:] == completion and continuation_ids[0] == pair.input_ids[-len(completion) - 1]


def test_export_gives_the_harness_the_training_ids_of_a_plain_tokenizer(tiny_models):
    examples = bool_q_examples(tiny_models["llama"], "plain")
    # A tokenizer of its own: lm_eval's HFLM sets a pad token on the one it is given.
    assert_harness_scores_training_ids(build_tokenizer(), examples, "plain")


@pytest.mark.parametrize("prompt_format", ["plain", "chat"])
def test_export_gives_the_harness_the_training_ids_with_bos_and_a_chat_template(chat_model, prompt_format, caplog):
    tokenizer = llama_chat_tokenizer()
    examples = bool_q_examples(chat_model, prompt_format)
    with caplog.at_level(logging.WARNING):
        rows = harness_rows(examples, tokenizer, prompt_format)
    assert "differently from training" not in caplog.text
    lead = "<s>" if prompt_format == "plain" else "<|im_start|>user\n"
    assert all(r["context"].startswith(lead) for r in rows)
    assert all(c.endswith("<|im_end|>") and c.count("<|im_end|>") == 1 for r in rows for c in r["choices"])
    assert_harness_scores_training_ids(tokenizer, examples, prompt_format)


def test_export_cuts_smollm2_chat_answers_as_training_does(tiny_models, caplog):
    """SmolLM2's own template writes the assistant turn as ``True<|im_end|>\\n``; training keeps
    ``True<|im_end|>``, and so must the harness. Where SmolLM2 cannot give the harness the training
    ids (a plain prompt ending in a newline: training has one ``\\n\\n`` token, the whole text two
    ``\\n``), the export says so."""
    try:
        gguf = embedded_gguf_path()
    except ModelLoadError as err:
        pytest.skip(f"the embedded SmolLM2 is not installed: {err}")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    examples = bool_q_examples(tiny_models["llama"], "plain")  # the prompts' text; laid out below in chat
    rows = harness_rows(examples, tokenizer, "chat")
    for example, row in zip(examples, rows, strict=True):
        assert row["choices"] == [f"{o}<|im_end|>" for o in example["options"]]
        assert row["context"].startswith("<|im_start|>system\n") and row["context"].endswith("<|im_start|>assistant\n")
    assert_harness_scores_training_ids(tokenizer, examples, "chat")

    with caplog.at_level(logging.WARNING, logger="lora_lightning.evaluation.harness"):
        harness_rows(examples[:1], tokenizer, "plain")
        assert "differently from training" not in caplog.text
        harness_rows([{**examples[0], "prompt": examples[0]["prompt"] + "\n"}], tokenizer, "plain")
    assert "bool_q: the harness tokenizes 2 of 2 options differently from training" in caplog.text


def common(model, root, prompt_format):
    return [
        "--config",
        CONFIG,
        "--model.model_name",
        str(model),
        "--data.tasks",
        "[bool_q, xsum]",
        "--data.max_length",
        str(MAX_LENGTH),
        "--data.eval_examples_per_task",
        "12",
        "--data.prompt_format",
        prompt_format,
        "--data.cache_dir",
        str(root / "cache"),
        "--trainer.precision",
        "32-true",
        "--samples.samples_per_task",
        "0",
    ]


@pytest.fixture(scope="module")
def trained_adapter(chat_model, tmp_path_factory):
    """One adapter (trained in chat format, 3 steps) for both formats' harness runs."""
    run = tmp_path_factory.mktemp("harness_run")
    fit = run_cli(
        "fit",
        *common(chat_model, run, "chat"),
        "--model.lora_r",
        "4",
        "--model.learning_rate",
        "0.01",
        "--data.max_examples_per_task",
        "16",
        "--trainer.max_steps",
        "3",
        "--trainer.default_root_dir",
        str(run),
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    return run / "adapter_last"


def project_margins(model, adapter, root, prompt_format, monkeypatch) -> list[list[float]]:
    """Per bool_q row of ``test``: each option's completion log-likelihood minus the first option's,
    by the project's own scoring (``test``'s rank classification)."""
    monkeypatch.setattr(sys, "argv", ["lora-lightning"])  # the CLI reads its arguments from ``args`` only
    data = build_cli([*common(model, root, prompt_format), "--model.adapter", str(adapter)], run=False).datamodule
    data.load_tokenizer()
    examples = data.eval_examples()["bool_q"]
    lora = load_lora_model(None, adapter).eval()
    margins = []
    for e in examples:
        nll, _ = completion_nll(
            lora, data.tokenizer, [e["prompt"]] * len(e["options"]), e["options"], MAX_LENGTH, prompt_format
        )
        margins.append([nll[0] - s for s in nll])
    return margins


@pytest.mark.parametrize("prompt_format", ["plain", "chat"])
def test_harness_scores_the_adapter_as_lora_lightning_test_does(
    chat_model, trained_adapter, prompt_format, tmp_path, monkeypatch
):
    model, adapter = chat_model, trained_adapter
    args = common(model, tmp_path, prompt_format)
    tested = run_cli("test", *args, "--model.adapter", str(adapter), "--trainer.default_root_dir", str(tmp_path))
    assert tested.returncode == 0, tested.stderr[-3000:]
    ours = {(r["task"], r["metric"]): r for r in csv.DictReader((adapter.parent / "eval_results.csv").open())}

    tasks = tmp_path / "tasks"
    exported = run_cli("lm-eval-tasks", str(tasks), *args, "--model.adapter", str(adapter))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "add_bos_token=False" in exported.stdout and f"max_length={MAX_LENGTH - 1}" in exported.stdout
    bool_q = yaml.safe_load((tasks / "bool_q.yaml").read_text())
    assert bool_q["output_type"] == "multiple_choice" and bool_q["task"] == "lora_lightning_bool_q"
    assert "output_type: generate_until" in (tasks / "xsum.yaml").read_text()
    rows = [json.loads(line) for line in (tasks / "bool_q.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(len(r["choices"]) == 2 and r["choices"][r["label"]] for r in rows)

    # plain lm_eval, no project code: the base from its folder, the adapter through peft
    results = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    harness = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={model},peft={adapter},add_bos_token=False,max_length={MAX_LENGTH - 1},dtype=float32",
            "--include_path",
            str(tasks),
            "--tasks",
            "lora_lightning",
            "--device",
            "cpu",
            "--batch_size",
            "4",
            "--output_path",
            str(results),
            "--log_samples",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert harness.returncode == 0, harness.stderr[-4000:]
    scores = json.loads(next(results.rglob("results_*.json")).read_text())["results"]
    accuracy = scores["lora_lightning_bool_q"]["acc,none"]
    assert 100 * accuracy == pytest.approx(float(ours[("bool_q", "accuracy_rank")]["adapter"]), abs=1e-6)
    # acc_norm (log-probability per character of the choice string) is accuracy_rank_norm
    accuracy_norm = scores["lora_lightning_bool_q"]["acc_norm,none"]
    assert 100 * accuracy_norm == pytest.approx(float(ours[("bool_q", "accuracy_rank_norm")]["adapter"]), abs=1e-6)
    rouge = scores["lora_lightning_xsum"]["rougeL,none"]
    assert 0 <= rouge <= 100

    # each option's margin over the first: the prompt's last token, scored too, is the same for both
    samples = [json.loads(line) for line in next(results.rglob("samples_lora_lightning_bool_q_*.jsonl")).open()]
    harness_ll = [[float(r[0][0]) for r in s["resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])]
    harness_margins = [ll - lls[0] for lls in harness_ll for ll in lls]
    ours_margins = [m for row in project_margins(model, adapter, tmp_path, prompt_format, monkeypatch) for m in row]
    assert harness_margins == pytest.approx(ours_margins, abs=1e-4)
    print(f"{prompt_format}: harness bool_q acc {accuracy:.4f}, xsum rougeL {rouge:.2f}")
