"""``prompt_format: auto`` picks the layout a tokenizer was tuned on, and the format recorded beside an adapter
drives ``generate``, ``predict`` and ``test``."""

import json
import shutil

import pytest
from conftest import REPO, run_cli

from lora_lightning.errors import UserInputError
from lora_lightning.loading import load_tokenizer
from lora_lightning.model import generate, load_lora_model
from lora_lightning.prompts import FORMAT_FILE, render_prompt, resolve_prompt_format

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_model(tiny_models, tmp_path_factory):
    """The tiny Llama with a chat template in its tokenizer, as an instruction-tuned model ships."""
    folder = tmp_path_factory.mktemp("chat") / "llama"
    shutil.copytree(tiny_models["llama"], folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    return folder


def test_auto_is_chat_with_a_template_and_plain_without(tiny_models, chat_model, tmp_path):
    plain, chat = load_tokenizer(str(tiny_models["llama"])), load_tokenizer(str(chat_model))
    assert resolve_prompt_format("auto", chat) == "chat"
    assert resolve_prompt_format("auto", plain) == "plain"
    assert resolve_prompt_format("plain", chat) == "plain"  # an explicit choice stands
    with pytest.raises(UserInputError, match="no chat template"):
        resolve_prompt_format("chat", plain)
    (tmp_path / FORMAT_FILE).write_text(json.dumps({"prompt_format": "plain"}))
    assert resolve_prompt_format("auto", chat, adapter=tmp_path) == "plain"  # what the adapter was trained with


def test_the_recorded_format_drives_generate_predict_and_test(chat_model, tmp_path):
    root = tmp_path / "run"
    config = [
        "--config",
        str(REPO / "configs" / "default.yaml"),
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.precision",
        "32-true",
        "--data.max_examples_per_task",
        "4",
        "--data.eval_examples_per_task",
        "2",
        "--samples.samples_per_task",
        "0",
    ]
    fit = run_cli(
        "fit",
        *config,
        "--model.model_name",
        str(chat_model),
        "--trainer.max_steps",
        "2",
        "--trainer.default_root_dir",
        str(root),
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "Prompt format: chat (data.prompt_format=auto)" in fit.stderr
    adapter = root / "adapter_last"
    assert json.loads((adapter / FORMAT_FILE).read_text()) == {"prompt_format": "chat"}
    # overwrite the record with plain: every reader must follow the record, not the tokenizer's template
    (adapter / FORMAT_FILE).write_text(json.dumps({"prompt_format": "plain"}))
    tokenizer = load_tokenizer(str(adapter))
    model = load_lora_model(None, adapter)
    prompt = "Is the sky blue?"
    expected = {
        fmt: generate(model, tokenizer, [prompt], max_new_tokens=6, prompt_format=fmt)[0] for fmt in ("plain", "chat")
    }
    assert expected["plain"] != expected["chat"]
    gen = run_cli("generate", "--adapter", str(adapter), "--prompt", prompt, "--max_new_tokens", "6")
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert gen.stdout.strip() == expected["plain"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": prompt}) + "\n")
    out = tmp_path / "out.jsonl"
    predict = run_cli(
        "predict",
        *config,
        "--model.model_name",
        "null",
        "--model.adapter",
        str(adapter),
        "--model.max_new_tokens",
        "6",
        "--data.predict_file",
        str(prompts),
        "--predictions.output",
        str(out),
        "--trainer.default_root_dir",
        str(root),
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert json.loads(out.read_text())["completion"] == expected["plain"]
    test = run_cli(
        "test",
        *config,
        "--model.model_name",
        "null",
        "--model.adapter",
        str(adapter),
        "--trainer.default_root_dir",
        str(root),
    )
    assert test.returncode == 0, test.stderr[-3000:]
    assert "prompt format plain, base model vs adapter" in (root / "eval_results.md").read_text()
    assert render_prompt(tokenizer, prompt, "chat") != render_prompt(tokenizer, prompt, "plain")
