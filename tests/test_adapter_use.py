"""Using a trained adapter: predict over JSONL, merge, AutoPeft interop, several adapters, push_to_hub, Python API."""

import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO, random_adapter, run_cli
from safetensors.torch import save_file

from lora_lightning.loading import load_tokenizer
from lora_lightning.model import generate, load_adapters, load_lora_model
from lora_lightning.model.merge import MergeError, merge_adapter

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])


def make_adapter(base, folder, seed):
    """An adapter with random (non-zero) LoRA weights, saved as training would save it."""
    return random_adapter(base, folder, seed)


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(tiny_models["llama"], root / name, seed) for name, seed in (("a", 1), ("b", 2))}


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_predict_over_a_jsonl_file(adapters, tmp_path):
    prompts = [{"prompt": f"Is {i} a number?", "id": i} for i in range(5)]
    src = tmp_path / "prompts.jsonl"
    src.write_text("\n".join(json.dumps(p) for p in prompts))
    out = tmp_path / "out.jsonl"
    result = run_cli(
        "predict",
        "--config",
        str(REPO / "configs/default.yaml"),
        "--model.model_name",
        "null",
        "--model.adapter",
        str(adapters["a"]),
        "--data.predict_file",
        str(src),
        "--data.batch_size",
        "2",
        "--predictions.output",
        str(out),
        "--model.max_new_tokens",
        "5",
        "--trainer.precision",
        "32-true",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(5))
    model = load_lora_model(None, adapters["a"])
    expected = generate(model, load_tokenizer(str(adapters["a"])), [p["prompt"] for p in prompts], max_new_tokens=5)
    assert [r["completion"] for r in rows] == expected


def test_predict_file_errors_are_one_line(adapters, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    result = run_cli(
        "predict",
        "--config",
        str(REPO / "configs/default.yaml"),
        "--model.model_name",
        "null",
        "--model.adapter",
        str(adapters["a"]),
        "--data.predict_file",
        str(bad),
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
    )
    assert result.returncode == 2
    assert "lora-lightning: error: " in result.stderr and 'line 2 needs a string "prompt"' in result.stderr
    assert "Traceback" not in result.stderr


def test_merged_model_matches_and_loads_without_peft(adapters, tmp_path):
    out = tmp_path / "merged"
    diff = merge_adapter(adapters["a"], out)
    assert diff <= 1e-4
    expected = logits(load_lora_model(None, adapters["a"]))
    save_file({"logits": expected.contiguous()}, tmp_path / "expected.safetensors")
    script = (
        "import sys; sys.modules['peft'] = None\n"  # any import of peft now fails
        "import torch; from safetensors.torch import load_file\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()\n"
        f"ids = torch.tensor({IDS.tolist()})\n"
        f"e = load_file({str(tmp_path / 'expected.safetensors')!r})['logits']\n"
        "print(float((m(input_ids=ids).logits - e).abs().max()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) <= 1e-4
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}


def test_merge_never_overwrites_an_existing_folder(adapters, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MergeError, match="exists and is not empty"):
        merge_adapter(adapters["a"], out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    result = run_cli("merge", "--adapter", str(adapters["a"]), "--output", str(out))
    assert result.returncode == 2 and "lora-lightning: error: output folder" in result.stderr


def test_auto_peft_round_trip(adapters):
    from peft import AutoPeftModelForCausalLM

    auto = AutoPeftModelForCausalLM.from_pretrained(str(adapters["a"])).eval()
    torch.testing.assert_close(logits(auto), logits(load_lora_model(None, adapters["a"])), rtol=0, atol=0)


def test_two_adapters_on_one_base_switched_by_name(adapters):
    model = load_adapters(None, {"a": adapters["a"], "b": adapters["b"]})
    only_a, only_b = logits(load_lora_model(None, adapters["a"])), logits(load_lora_model(None, adapters["b"]))
    model.set_adapter("a")
    got_a = logits(model)
    model.set_adapter("b")
    got_b = logits(model)
    torch.testing.assert_close(got_a, only_a)
    torch.testing.assert_close(got_b, only_b)
    assert not torch.allclose(got_a, got_b)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--adapter_export.push_to_hub", "true", "--adapter_export.hub_repo", "someone/my-adapter"],
            "HF_HUB_OFFLINE is set",
        ),
        (["--adapter_export.push_to_hub", "true"], "push_to_hub needs a hub repository name"),
    ],
)
def test_push_to_hub_offline_fails_before_training(tiny_models, tmp_path, args, message):
    root = tmp_path / "run"
    result = run_cli(
        "fit",
        "--config",
        str(REPO / "configs/default.yaml"),
        "--model.model_name",
        str(tiny_models["llama"]),
        "--trainer.default_root_dir",
        str(root),
        "--data.cache_dir",
        str(root / "cache"),
        *args,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not root.exists()  # nothing trained, nothing written


def test_readme_python_api_runs(tiny_models, tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    code = re.search(r"<!-- python-api -->\n```python\n(.*?)```", readme, re.S).group(1)
    assert 'MODEL = "smollm2-135m-instruct"' in code
    code = code.replace('MODEL = "smollm2-135m-instruct"', f"MODEL = {str(tiny_models['llama'])!r}")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md python-api", "exec"), namespace)
    assert (tmp_path / "checkpoints/python-api/adapter/adapter_model.safetensors").is_file()
    assert len(namespace["completions"]) == 1 and isinstance(namespace["completions"][0], str)
    assert namespace["trainer"].global_step == 6  # 3 tasks x 16 examples / batch 8
