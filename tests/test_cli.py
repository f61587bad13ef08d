"""``lora-lightning`` run as a user runs it: fit end to end on a tiny Llama, exports, resume, errors."""

import json
from pathlib import Path

import pytest
import torch
from conftest import DEFAULT_CONFIG, REPO, run_cli, tiny_fit_args
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def fit_args(model: Path, root: Path, *extra: str) -> list[str]:
    """A short fit of the default config on a tiny model; every output (data cache too) under ``root``."""
    keys = {
        "trainer.max_epochs": 1,
        "trainer.log_every_n_steps": 1,
        "data.max_examples_per_task": 16,
        "data.max_val_examples_per_task": 8,
        "data.batch_size": 4,
    }
    return tiny_fit_args(model, root, keys, *extra)


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    """One fit of the default config on the tiny Llama, then a resume of it for a second epoch."""
    root = tmp_path_factory.mktemp("cli") / "run"
    first = run_cli(*fit_args(tiny_models["llama"], root))
    assert first.returncode == 0, first.stderr[-3000:]
    history_after_first = json.loads((root / "adapter_last" / "training_history.json").read_text())
    resumed = run_cli(
        *fit_args(
            tiny_models["llama"], root, "--trainer.max_epochs", "2", "--ckpt_path", str(root / "ckpt" / "last.ckpt")
        )
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"root": root, "base": tiny_models["llama"], "first_history": history_after_first}


def test_exports_adapter_in_peft_format_with_tokenizer_and_history(run):
    for folder in ("adapter", "adapter_last"):
        files = {p.name for p in (run["root"] / folder).iterdir()}
        assert {
            "adapter_config.json",
            "adapter_model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "training_history.json",
        } <= files
        assert not {f for f in files if f.endswith((".bin", ".pkl", ".pt"))}
    config = json.loads((run["root"] / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(run["base"])
    # configs/default.yaml: every linear layer of the blocks (make quality chose it), not the head
    linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # (peft stores all-linear as the full module names it chose)
    assert {name.rsplit(".", 1)[-1] for name in config["target_modules"]} == linear and config["r"] == 4
    card = (run["root"] / "adapter" / "README.md").read_text()
    assert "## LoRA settings" in card and "| bool_q | 16 | 8 | 0 |" in card and "| r | 4 |" in card
    weights = load_file(run["root"] / "adapter" / "adapter_model.safetensors")
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # trained, not the zero init


def test_validation_loss_is_recorded_before_and_after_training(run):
    history = json.loads((run["root"] / "adapter_last" / "training_history.json").read_text())
    steps = [s for s, _ in history["val_loss"]]
    assert steps[0] == 0 and steps[-1] == history["global_step"] > 0
    assert history["data"]["bool_q"]["train"] == 16
    assert len(history["train_loss"]) == history["global_step"]


def test_checkpoints_hold_only_trainable_weights(run):
    base_bytes = (run["base"] / "model.safetensors").stat().st_size
    ckpts = list((run["root"] / "ckpt").glob("*.ckpt"))
    assert {c.name for c in ckpts} >= {"last.ckpt"} and len(ckpts) == 2
    for ckpt in ckpts:
        assert ckpt.stat().st_size < 0.25 * base_bytes  # LoRA on every linear layer of a tiny model: ~17%
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert state["state_dict"] and all("lora_" in k for k in state["state_dict"])
        assert state["optimizer_states"] and state["lr_schedulers"]


def test_resume_from_last_ckpt_continues_where_it_stopped(run):
    first = run["first_history"]
    final = json.loads((run["root"] / "adapter_last" / "training_history.json").read_text())
    assert final["global_step"] == 2 * first["global_step"]
    assert final["epoch"] == 2
    steps = [s for s, _ in final["train_loss"]]
    assert steps == list(range(1, final["global_step"] + 1))  # no step repeated or skipped across the resume
    state = torch.load(run["root"] / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    adam_steps = {int(s["step"]) for s in state["optimizer_states"][0]["state"].values()}
    assert adam_steps == {final["global_step"]}


def test_plain_peft_loads_the_adapter_with_the_same_logits(run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_lightning.model import load_lora_model

    adapter = run["root"] / "adapter"
    base_name = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_name), str(adapter)).eval()
    ours = load_lora_model(None, adapter)
    bare = AutoModelForCausalLM.from_pretrained(base_name).eval()
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    with torch.no_grad():
        a, b, c = plain(input_ids=ids).logits, ours(input_ids=ids).logits, bare(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)  # the adapter changes the model


def test_tensorboard_event_files_hold_the_training_curves(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for events in (run["root"] / "lightning_logs").glob("version_*/events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    assert {
        "train/loss",
        "train/ppl",
        "train/grad_norm",
        "val/loss",
        "val/ppl",
        "lr-AdamW",
        "train/device/items_per_sec",
        "train/device/samples_per_sec",
        "train/device/mfu",
    } <= set(scalars)
    assert all(0 < v < 1 for _, v in scalars["train/device/mfu"])
    assert all(v > 0 for _, v in scalars["train/device/items_per_sec"])
    val_steps = sorted(s for s, _ in scalars["val/loss"])
    assert val_steps[0] == 0 and val_steps[-1] > 0
    lrs = [v for _, v in sorted(scalars["lr-AdamW"])]
    assert max(lrs) <= 1e-3 + 1e-9 and lrs[-1] < max(lrs)  # warmup then decay
    assert all(v > 0 for _, v in scalars["train/loss"])


def test_generate_command_uses_the_adapter(run):
    out = run_cli(
        "generate", "--adapter", str(run["root"] / "adapter"), "--prompt", "Is water wet?", "--max_new_tokens", "4"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip()


def test_print_config_shows_every_section():
    out = run_cli("fit", "--config", DEFAULT_CONFIG, "--model.lora_r", "8", "--print_config")
    assert out.returncode == 0, out.stderr
    for line in (
        "lora_r: 8",
        "model_name: smollm2-135m-instruct",
        "default_root_dir: checkpoints/default",
        "- bool_q",
        "monitor: val/loss",
    ):
        assert line in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.tasks", "[bool_q, bool_z]"], "unknown task 'bool_z'"),
        (["--model.no_such_key", "1"], "no_such_key"),
        (["--model.lora_r", "0"], "lora_r must be a positive integer, got 0"),
        (["--model.lora_dropout", "1.0"], "lora_dropout must be in [0, 1), got 1.0"),
        (["--data.data_files", "{bool_q: /no/such/file.jsonl}"], "data file '/no/such/file.jsonl' does not exist"),
    ],
)
def test_bad_input_gives_one_line_error_and_touches_nothing(tmp_path, tiny_models, args, message):
    root = tmp_path / "run"
    (root / "adapter").mkdir(parents=True)
    (root / "adapter" / "adapter_model.safetensors").write_bytes(b"earlier good adapter")
    out = run_cli(*fit_args(tiny_models["llama"], root), *args)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("lora-lightning: error:") and message in errors[0], out.stderr
    assert "Traceback" not in out.stderr
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "adapter",
        "adapter/adapter_model.safetensors",
    ]
    assert not (REPO / "checkpoints" / "run").exists()
    assert (root / "adapter" / "adapter_model.safetensors").read_bytes() == b"earlier good adapter"


TRACKER_OVERLAYS = {"mlflow.yaml": "MLFlowLogger", "wandb.yaml": "WandbLogger"}


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_parses(config):
    """default.yaml alone; every other config is an overlay composed on top of it."""
    overlay = [] if config == "default.yaml" else ["--config", f"configs/{config}"]
    out = run_cli("fit", "--config", "configs/default.yaml", *overlay, "--print_config")
    assert out.returncode == 0, out.stderr
    if config in TRACKER_OVERLAYS:  # they add a logger to any run and leave its folder alone
        assert TRACKER_OVERLAYS[config] in out.stdout and "default_root_dir: checkpoints/default" in out.stdout
    else:
        assert f"default_root_dir: checkpoints/{Path(config).stem}" in out.stdout
    assert "lora_r: 16" in out.stdout and "tasks:\n  - bool_q" in out.stdout  # the default's keys are kept
    if config == "ddp.yaml":
        assert "devices: 2" in out.stdout and "strategy: ddp" in out.stdout and "batch_size: 4" in out.stdout


def test_a_task_defined_only_in_yaml_trains_through_fit(tmp_path, tiny_models):
    task = tmp_path / "capitals.yaml"
    task.write_text(
        "name: capitals\n"
        "description: Name the capital of a country.\n"
        "fields: {country: country, capital: capital, answer: {column: label, option: true}}\n"
        "options: [no, yes]\n"
        "metrics: [rouge_l]\n"
        "templates:\n"
        "  - {prompt: 'What is the capital of {country}?', completion: '{capital}'}\n"
        "  - {prompt: 'Is {capital} the capital of {country}?\\n\\n{options_}', completion: '{answer}'}\n"
    )
    rows = [{"country": f"Land{i}", "capital": f"City{i}", "label": 1} for i in range(30)]
    data = tmp_path / "capitals.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    root = tmp_path / "run"
    out = run_cli(
        *fit_args(tiny_models["gpt2"], root, "--data.tasks", f"[{task}]", "--data.data_files", f"{{capitals: {data}}}"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    history = json.loads((root / "adapter_last" / "training_history.json").read_text())
    # 30 rows in one file: 3 held out for checkpoint selection, 3 more for evaluation, 24 to train on
    tokens = history["data"]["capitals"].pop("train_completion_tokens")
    assert tokens >= 16  # every example has a completion and its EOS
    assert history["data"] == {
        "capitals": {
            "available": 24,
            "train": 16,
            "validation": 3,
            "dropped_too_long": 0,
            "selection_split": "train (10% held out)",
            "evaluation_split": "train (another 10% held out)",
            "evaluation_rows": 3,
        }
    }
    assert "Task capitals: 16 train, 3 selection (train (10% held out)), 3 evaluation rows" in out.stderr


def test_generation_samples_are_logged_as_text_during_fit(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (run["root"] / "lightning_logs").glob("version_*/events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        tags |= set(acc.Tags()["tensors"])
    assert {"samples/bool_q/text_summary", "samples/common_gen/text_summary", "samples/xsum/text_summary"} <= tags


def test_test_command_scores_base_and_adapter(run):
    import csv

    out = run_cli(
        "test",
        "--config",
        DEFAULT_CONFIG,
        "--model.model_name",
        str(run["base"]),
        "--model.adapter",
        str(run["root"] / "adapter"),
        "--data.eval_examples_per_task",
        "4",
        "--trainer.default_root_dir",
        str(run["root"] / "eval"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(csv.DictReader((run["root"] / "eval_results.csv").open()))
    by_key = {(r["task"], r["metric"]): r for r in rows}
    assert {
        ("bool_q", "accuracy_rank"),
        ("bool_q", "accuracy_exact"),
        ("common_gen", "rouge_l"),
        ("common_gen", "coverage"),
        ("xsum", "rouge_l"),
        ("xsum", "loss"),
        ("xsum", "perplexity"),
    } <= set(by_key)
    for r in rows:
        assert float(r["delta"]) == pytest.approx(float(r["adapter"]) - float(r["base"]), abs=1e-6)
    # the adapter was trained: its held-out completion loss differs from the base's
    assert float(by_key[("bool_q", "loss")]["delta"]) != 0
    assert "| bool_q | accuracy_rank |" in (run["root"] / "eval_results.md").read_text()


def test_validate_command_scores_the_task_metrics_too(run, tmp_path):
    out = run_cli(
        "validate",
        "--config",
        DEFAULT_CONFIG,
        "--model.model_name",
        str(run["base"]),
        "--model.adapter",
        str(run["root"] / "adapter"),
        "--data.eval_examples_per_task",
        "2",
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.default_root_dir",
        str(tmp_path / "v"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "validate/common_gen/rouge_l" in out.stdout and "validate_base/xsum/loss" in out.stdout


def test_generate_reads_prompts_interactively_when_none_is_given(run):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lora_lightning",
            "generate",
            "--adapter",
            str(run["root"] / "adapter"),
            "--max_new_tokens",
            "3",
        ],
        input="Is water wet?\n\nConcepts: a, b\\n\\nWrite.\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len([line for line in done.stdout.splitlines()]) >= 2  # one answer per prompt line
