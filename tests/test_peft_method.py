"""Any peft method through the same module: ``model.peft_config`` (here LoHa, which is not LoRA).

A fit with LoHa (low-rank Hadamard product) trains (the selection loss falls), exports a plain peft LoHa adapter that
``PeftModel.from_pretrained`` loads on the base and that changes its outputs as the trained module
did; ``test`` scores it; a config that names no peft method is one line and exit 2.
"""

import json

import pytest
import torch
from conftest import run_cli, tiny_fit_args

from lora_lightning import LoRAModule
from lora_lightning.errors import UserInputError

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LOHA = {"class_path": "peft.LoHaConfig", "init_args": {"r": 4, "alpha": 8, "target_modules": LINEAR}}


@pytest.mark.slow
def test_a_loha_adapter_trains_exports_and_loads_in_plain_peft(tiny_models, tmp_path):
    from peft import PeftModel
    from peft.tuners.loha import LoHaLayer
    from transformers import AutoModelForCausalLM

    base, root = tiny_models["llama"], tmp_path / "run"
    keys = {
        "model.learning_rate": 0.05,
        "model.peft_config": json.dumps(LOHA),
        "trainer.max_epochs": 2,
        "data.max_examples_per_task": 12,
        "data.max_val_examples_per_task": 6,
        "data.batch_size": 4,
        "samples.samples_per_task": 0,
    }
    done = run_cli(*tiny_fit_args(base, root, keys, "--model.compile", "false"))
    assert done.returncode == 0, done.stderr[-3000:]
    adapter = root / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LOHA" and sorted(config["target_modules"]) == sorted(LINEAR)
    history = json.loads((adapter / "training_history.json").read_text())
    assert history["best_val_loss"] < history["val_loss"][0][1] - 0.05  # it learns

    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    bare = AutoModelForCausalLM.from_pretrained(base).eval()
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    assert any(isinstance(m, LoHaLayer) for m in plain.modules())
    with torch.no_grad():
        assert (plain(input_ids=ids).logits - bare(input_ids=ids).logits).abs().max() > 1e-3

    scored = run_cli(
        "test", "--config", tiny_fit_args(base, root)[2], "--model.model_name", str(base),
        "--model.adapter", str(adapter), "--data.cache_dir", str(root / "cache"), "--data.eval_examples_per_task", "2",
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    table = (root / "eval_results.md").read_text()
    assert "| bool_q | accuracy_rank |" in table and "base" in table and "adapter" in table


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"class_path": "peft.NoSuchConfig"}, "names no importable class"),
        ({"class_path": "torch.nn.Linear"}, "not a peft.PeftConfig subclass"),
        ({"class_path": "peft.IA3Config", "init_args": ["q_proj"]}, "init_args must be a mapping"),
        ({"target_modules": ["q_proj"]}, "must be {class_path"),
    ],
)
def test_a_peft_config_that_names_no_peft_method_is_one_line(tiny_models, spec, words):
    with pytest.raises(UserInputError, match="model.peft_config") as err:
        LoRAModule(model_name=str(tiny_models["llama"]), peft_config=spec)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_peft_config_with_full_fine_tuning_or_an_adapter_is_refused(tiny_models, tmp_path):
    with pytest.raises(UserInputError, match="model.lora false"):
        LoRAModule(model_name=str(tiny_models["llama"]), lora=False, peft_config=LOHA)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(UserInputError, match="drop model.peft_config"):
        LoRAModule(model_name=str(tiny_models["llama"]), adapter=str(tmp_path), peft_config=LOHA)


def test_the_cli_refuses_a_bad_peft_config_in_one_line(tiny_models, tmp_path):
    done = run_cli(*tiny_fit_args(tiny_models["llama"], tmp_path, {"model.peft_config": '{"class_path": "os.path"}'}))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("lora-lightning: error: model.peft_config")
