"""Prompts far longer than the room for them: a chat prompt keeps its template (system turn, role
headers, generation prompt) in training, scoring and generation, and every generation path (samples
during ``fit``, ``predict``, ``generate``, ``test``) fits a model of 64 positions."""

import json

import pytest
import torch
from conftest import REPO, run_cli

from lora_lightning.data.tokenization import IGNORE_INDEX, encode_pairs
from lora_lightning.errors import UserInputError
from lora_lightning.loading import ModelLoadError, embedded_gguf_path, load_tokenizer
from lora_lightning.model import generate
from lora_lightning.model.scoring import score_examples
from lora_lightning.prompts import render_prompt

MAX_LENGTH = 128
QUESTION = "\n\nIs it true that the river runs south?\n\nOPTIONS:\n- False\n- True"
MARK = "@@CONTENT@@"


def long_prompt(tokenizer, tokens: int) -> str:
    """A FLAN-style prompt of at least ``tokens`` tokens: a long passage, then the question and options."""
    passage = " ".join(f"Sentence {i} tells of the river, the mountain and the old town." for i in range(tokens // 4))
    prompt = passage + QUESTION
    assert len(tokenizer(prompt)["input_ids"]) >= tokens
    return prompt


@pytest.fixture(scope="module")
def smol_tokenizer(tmp_path_factory):
    """SmolLM2-135M-Instruct's tokenizer and chat template, from the embedded model (offline)."""
    from transformers import AutoTokenizer

    try:
        gguf = embedded_gguf_path()
    except ModelLoadError as err:
        pytest.skip(f"the embedded model's chat template is needed: {err}")
    folder = tmp_path_factory.mktemp("smollm2_tokenizer")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)
    return load_tokenizer(str(folder))


@pytest.fixture(scope="module")
def template(smol_tokenizer):
    """The template's text before the user content (system turn, user header) and after it (end of the
    user turn, generation prompt)."""
    text = render_prompt(smol_tokenizer, MARK, "chat")
    before, after = text.split(MARK)
    assert before.startswith("<|im_start|>system\n") and before.endswith("<|im_start|>user\n")
    assert after == "<|im_end|>\n<|im_start|>assistant\n"
    return before, after


@pytest.fixture(scope="module")
def smol_sized_llama(smol_tokenizer):
    """A tiny random Llama over SmolLM2's vocabulary with ``MAX_LENGTH`` positions, recording the ids of
    every multi-token forward of its decoder (the prompts generation and scoring feed it)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smol_tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        max_position_embeddings=MAX_LENGTH,
        eos_token_id=smol_tokenizer.eos_token_id,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    model.seen = []

    def record(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if ids is not None and ids.shape[1] > 1:
            for r in range(ids.shape[0]):
                keep = mask[r].bool() if mask is not None and mask.dim() == 2 else torch.ones_like(ids[r]).bool()
                model.seen.append(ids[r][keep].tolist())

    model.model.register_forward_pre_hook(record, with_kwargs=True)
    return model


def assert_template_kept(tokenizer, ids, template, limit):
    text = tokenizer.decode(ids)
    before, after = template
    assert len(ids) <= limit
    assert text.startswith(before), text[:200]  # system turn and user header, whole
    assert (QUESTION.strip() + after) in text  # the end of the content, then the generation prompt
    return text


def test_a_long_chat_prompt_keeps_the_template_in_training(smol_tokenizer, template):
    prompt = long_prompt(smol_tokenizer, 10 * MAX_LENGTH)
    (example,) = encode_pairs(smol_tokenizer, [prompt], ["True"], MAX_LENGTH, prompt_format="chat")
    assert MAX_LENGTH - 3 <= len(example.input_ids) <= MAX_LENGTH  # cut to fit, not far below it
    prompt_ids = [i for i, label in zip(example.input_ids, example.labels) if label == IGNORE_INDEX]
    text = assert_template_kept(smol_tokenizer, prompt_ids, template, MAX_LENGTH)
    assert text.endswith(template[1])  # the prompt ends with the generation prompt
    completion = [label for label in example.labels if label != IGNORE_INDEX]
    assert smol_tokenizer.decode(completion) == "True<|im_end|>"


def test_a_long_chat_prompt_keeps_the_template_in_generation(smol_tokenizer, template, smol_sized_llama):
    prompt = long_prompt(smol_tokenizer, 10 * MAX_LENGTH)
    for limit in (None, MAX_LENGTH // 2):  # the model's context alone, or a caller's limit too
        smol_sized_llama.seen.clear()
        generate(
            smol_sized_llama, smol_tokenizer, [prompt], max_new_tokens=4, prompt_format="chat", max_prompt_tokens=limit
        )
        (ids,) = smol_sized_llama.seen
        text = assert_template_kept(smol_tokenizer, ids, template, limit or MAX_LENGTH - 4)
        assert text.endswith(template[1])


def test_a_room_smaller_than_the_chat_template_is_refused(smol_tokenizer, smol_sized_llama):
    with pytest.raises(UserInputError, match="the chat template alone does not fit in 8 prompt tokens"):
        generate(
            smol_sized_llama, smol_tokenizer, ["Is it raining?"], max_new_tokens=MAX_LENGTH - 8, prompt_format="chat"
        )
    (example,) = encode_pairs(smol_tokenizer, ["Is it raining?"], ["True"], 8, prompt_format="chat")
    assert example is None  # in training such an example is dropped (and counted), never cut into the template


def test_a_long_chat_prompt_keeps_the_template_in_scoring(smol_tokenizer, template, smol_sized_llama):
    example = {
        "prompt": long_prompt(smol_tokenizer, 10 * MAX_LENGTH),
        "reference": "True",
        "max_new_tokens": 4,
        "options": ["False", "True"],
    }
    smol_sized_llama.seen.clear()
    (scored,) = score_examples(smol_sized_llama, smol_tokenizer, [example], 10 * MAX_LENGTH, prompt_format="chat")
    assert scored["tokens"] == 2 and scored["ranked"] in (0, 1)  # "True<|im_end|>" scored, an option chosen
    # completion loss, generation, and the two options: each within the model's positions, template whole
    assert len(smol_sized_llama.seen) == 4
    for ids in smol_sized_llama.seen:
        assert_template_kept(smol_tokenizer, ids, template, MAX_LENGTH)


# -- every generation path fits a model of 64 positions ----------------------------------------------

POSITIONS = 64


@pytest.fixture(scope="module")
def short_gpt2(tokenizer, tmp_path_factory):
    """A tiny random GPT-2 with 64 positions and the tiny tokenizer, saved as a user would have it."""
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2_64")
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=POSITIONS,
        eos_token_id=eos,
        bos_token_id=eos,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def long_rows(tokenizer, tmp_path_factory):
    """bool_q files whose every passage is about 300 tokens, and a predict file of one such prompt."""
    folder = tmp_path_factory.mktemp("long_rows")
    passage = long_prompt(tokenizer, 300).removesuffix(QUESTION)
    rows = [{"question": f"is river {i} long", "answer": i % 2 == 0, "passage": passage} for i in range(10)]
    for split, part in (("train", rows[:8]), ("validation", rows[8:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (folder / "prompts.jsonl").write_text(json.dumps({"prompt": long_prompt(tokenizer, 300)}) + "\n")
    files = {"bool_q": {s: str(folder / f"{s}.jsonl") for s in ("train", "validation")}}
    return {"data_files": json.dumps(files), "prompts": folder / "prompts.jsonl"}


def data_args(long_rows, root):
    return [
        "--config",
        str(REPO / "configs" / "default.yaml"),
        "--trainer.precision",
        "32-true",
        "--trainer.default_root_dir",
        str(root),
        "--data.cache_dir",
        str(root / "data_cache"),
        "--data.tasks",
        "[bool_q]",
        "--data.data_files",
        long_rows["data_files"],
        "--data.batch_size",
        "4",
        "--data.eval_examples_per_task",
        "2",
    ]


@pytest.fixture(scope="module")
def fitted(short_gpt2, long_rows, tmp_path_factory):
    """One short fit on the 64-position GPT-2 (data.max_length 64), with validation samples on."""
    root = tmp_path_factory.mktemp("fit64") / "run"
    out = run_cli(
        "fit",
        *data_args(long_rows, root),
        "--model.model_name",
        str(short_gpt2),
        "--model.lora_r",
        "4",
        "--model.compile",
        "false",
        "--data.max_length",
        str(POSITIONS),
        "--trainer.max_epochs",
        "1",
        "--samples.samples_per_task",
        "2",
    )
    return {"root": root, "fit": out, "data": long_rows}


def no_traceback(out):
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]


@pytest.mark.slow
def test_fit_logs_generation_samples_of_long_prompts(fitted):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    no_traceback(fitted["fit"])
    tags = set()
    for events in (fitted["root"] / "lightning_logs").glob("version_*/events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["tensors"])
    assert any(t.startswith("samples/bool_q") for t in tags), tags


@pytest.mark.slow
def test_predict_fits_a_long_prompt(fitted, tmp_path):
    out = tmp_path / "completions.jsonl"
    result = run_cli(
        "predict",
        *data_args(fitted["data"], tmp_path / "run"),
        "--model.model_name",
        "null",
        "--model.adapter",
        str(fitted["root"] / "adapter"),
        "--model.max_new_tokens",
        "8",
        "--data.predict_file",
        str(fitted["data"]["prompts"]),
        "--predictions.output",
        str(out),
    )
    no_traceback(result)
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert isinstance(row["completion"], str)


@pytest.mark.slow
def test_generate_command_fits_a_long_prompt(fitted):
    prompt = json.loads(fitted["data"]["prompts"].read_text())["prompt"]
    adapter = str(fitted["root"] / "adapter")
    result = run_cli("generate", "--adapter", adapter, "--prompt", prompt, "--max_new_tokens", "8")
    no_traceback(result)


@pytest.mark.slow
def test_test_scores_long_prompts_within_the_context(fitted, tmp_path):
    root = tmp_path / "run"
    result = run_cli(  # data.max_length stays the default config's 384: the model's 64 positions bound it
        "test",
        *data_args(fitted["data"], root),
        "--model.model_name",
        "null",
        "--model.adapter",
        str(fitted["root"] / "adapter"),
    )
    no_traceback(result)
    table = (fitted["root"] / "eval_results.md").read_text()  # beside the adapter
    assert "| bool_q | loss |" in table and "| bool_q | accuracy_exact |" in table


def test_generate_refuses_a_budget_the_context_cannot_hold(short_gpt2):
    from lora_lightning.loading import load_causal_lm

    tokenizer = load_tokenizer(str(short_gpt2))
    model = load_causal_lm(str(short_gpt2)).eval()
    with pytest.raises(UserInputError, match="leaves no room for a prompt in the model's 64 positions"):
        generate(model, tokenizer, ["Is it raining?"], max_new_tokens=POSITIONS)
    long = long_prompt(tokenizer, 300)
    assert isinstance(generate(model, tokenizer, [long], max_new_tokens=POSITIONS - 1)[0], str)
