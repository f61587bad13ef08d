"""peft's LoRA variants as keys: ``init_lora_weights`` (gaussian, PiSSA, OLoRA), LoRA+ and NEFTune.

Each is checked for what it promises: gaussian A has std 1/r; PiSSA/OLoRA start from the original
model's outputs with the residual in the base, and their exported adapter rebuilds the trained model
through plain peft; LoRA+ gives lora_B ratio x the learning rate under the same schedule; NEFTune
noise is bounded, reaches training forwards only, and leaves eval logits and generation untouched.
"""

import functools
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, run_cli
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM

from lora_lightning import LoRAModule
from lora_lightning.errors import UserInputError
from lora_lightning.loading import load_causal_lm
from lora_lightning.model.generation import generate
from lora_lightning.model.lora import LoRAConfigError, apply_lora

CONFIG = str(REPO / "configs" / "default.yaml")
PROMPTS = ["Concepts: dog, ball, park", "Is the sky blue today, friend?"]


def lora_layers(model):
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def probe_ids(tokenizer):
    """The prompts' first tokens, as many from each (the tiny tokenizer has no pad token, on purpose)."""
    rows = [tokenizer(p)["input_ids"] for p in PROMPTS]
    return torch.tensor([r[: min(map(len, rows))] for r in rows])


def module_with_model(folder, **kwargs):
    """A LoRAModule with its model built by ``configure_model``, on a stand-in trainer (float32, 10 steps)."""
    torch.manual_seed(0)
    module = LoRAModule(model_name=str(folder), lora_r=4, lora_dropout=0.0, **kwargs)
    module.trainer = SimpleNamespace(
        precision="32-true", estimated_stepping_batches=10, strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    module.configure_model()
    return module


# -- init_lora_weights --------------------------------------------------------------------------


def test_gaussian_init_draws_a_with_std_one_over_r_and_zero_b(tiny_models):
    r = 4
    stds = {}
    for init in ("gaussian", "default"):
        torch.manual_seed(0)
        model = apply_lora(load_causal_lm(str(tiny_models["llama"])), r=r, init_lora_weights=init)
        layers = lora_layers(model)
        a = torch.cat([m.lora_A["default"].weight.flatten() for m in layers])
        assert all(torch.count_nonzero(m.lora_B["default"].weight) == 0 for m in layers)
        stds[init] = float(a.detach().std())
    assert model.peft_config["default"].init_lora_weights is True  # "default" is peft's True
    assert stds["gaussian"] == pytest.approx(1 / r, rel=0.08)  # 1,024 draws of N(0, 1/r^2)
    assert abs(stds["default"] - 1 / r) > 0.1  # kaiming-uniform: 1/sqrt(3 * 64), far from 1/r


@pytest.mark.parametrize(
    "arch, init",
    [("gpt2", "pissa"), ("gpt_neox", "pissa"), ("gpt_neox", "olora"), ("llama", "pissa"), ("llama", "olora")],
)
def test_pissa_and_olora_start_from_the_original_model(tiny_models, tokenizer, arch, init):
    original = load_causal_lm(str(tiny_models[arch])).eval()
    before = {n: p.detach().clone() for n, p in original.named_parameters()}
    ids = probe_ids(tokenizer)
    with torch.no_grad():
        expected = original(ids).logits
        model = apply_lora(load_causal_lm(str(tiny_models[arch])), r=4, dropout=0.0, init_lora_weights=init).eval()
        got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    for layer in lora_layers(model):
        assert torch.count_nonzero(layer.lora_B["default"].weight) > 0  # the adapter starts non-zero ...
        name = next(n for n, m in model.get_base_model().named_modules() if m is layer)
        residual = layer.get_base_layer().weight
        assert not torch.allclose(residual, before[f"{name}.weight"])  # ... and was taken out of the base
        # residual + scale * B A is the original weight (get_delta_weight transposes for GPT-2's Conv1D)
        torch.testing.assert_close(residual + layer.get_delta_weight("default"), before[f"{name}.weight"])


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_exported_residual_adapter_rebuilds_the_trained_model_through_plain_peft(
    tiny_models, tokenizer, tmp_path, init
):
    folder = str(tiny_models["llama"])
    model = apply_lora(load_causal_lm(folder), r=4, dropout=0.0, init_lora_weights=init)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p), alpha=0.05)  # "trained": away from the initial adapter
    ids = probe_ids(tokenizer)
    with torch.no_grad():
        trained = model.eval()(ids).logits
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["init_lora_weights"] == init
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, trained, rtol=0, atol=1e-5)


def test_olora_is_refused_on_gpt2(tiny_models):
    with pytest.raises(LoRAConfigError, match="init_lora_weights olora does not support 'gpt2'"):
        apply_lora(load_causal_lm(str(tiny_models["gpt2"])), r=4, init_lora_weights="olora")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"init_lora_weights": "svd"}, "init_lora_weights must be one of default, gaussian, pissa, olora; got 'svd'"),
        ({"loraplus_lr_ratio": 0}, "loraplus_lr_ratio must be a finite number > 0"),
        ({"loraplus_lr_ratio": -16.0}, "loraplus_lr_ratio must be a finite number > 0"),
        ({"loraplus_lr_ratio": 16.0, "lora": False}, "loraplus_lr_ratio needs LoRA"),
        ({"neftune_noise_alpha": -5.0}, "neftune_noise_alpha must be a finite number >= 0"),
        ({"neftune_noise_alpha": float("nan")}, "neftune_noise_alpha must be a finite number >= 0"),
    ],
)
def test_bad_variant_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(UserInputError, match=message) as err:
        LoRAModule(model_name="/does/not/matter", **kwargs)
    assert "\n" not in str(err.value)


# -- LoRA+ --------------------------------------------------------------------------------------


def test_loraplus_gives_lora_b_ratio_times_the_rate_under_one_schedule(tiny_models):
    lr, ratio, decay = 1e-3, 16.0, 0.01
    # the module's optimizer class as LightningCLI hands it over: a partial holding the other arguments
    sgd = functools.partial(torch.optim.SGD, momentum=0.9)
    module = module_with_model(
        tiny_models["llama"], optimizer=sgd, learning_rate=lr, weight_decay=decay, loraplus_lr_ratio=ratio
    )
    module.model.train()
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    names = {id(p): n for n, p in module.model.named_parameters()}
    group_of = {names[id(p)]: g for g in optimizer.param_groups for p in g["params"]}
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert set(group_of) == trainable  # every trained weight in exactly one group
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    for name, group in group_of.items():
        assert group["momentum"] == 0.9
        assert group["initial_lr"] == pytest.approx(lr * ratio if "lora_B" in name else lr)
        assert group["weight_decay"] == decay
    # warmup (module default 6% of 10 steps: 1 step) then linear decay, one multiplier for every group
    seen = []
    for _ in range(6):
        factors = {g["lr"] / g["initial_lr"] for g in optimizer.param_groups}
        assert len({round(f, 12) for f in factors}) == 1
        seen.append(factors.pop())
        optimizer.step()
        scheduler.step()
    assert seen[0] == 0.0 and seen[1] == pytest.approx(1.0) and 0 < seen[5] < seen[2] < 1


def test_without_loraplus_every_group_has_the_one_rate(tiny_models):
    module = module_with_model(tiny_models["llama"], learning_rate=1e-3)
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {g["initial_lr"] for g in optimizer.param_groups} == {1e-3}


# -- NEFTune ------------------------------------------------------------------------------------


def test_neftune_noise_is_bounded_and_reaches_training_forwards_only(tiny_models, tokenizer):
    alpha = 5.0
    plain = module_with_model(tiny_models["llama"]).model
    noisy = module_with_model(tiny_models["llama"], neftune_noise_alpha=alpha).model
    ids = probe_ids(tokenizer)
    embeddings = noisy.get_input_embeddings()
    clean = torch.nn.functional.embedding(ids, embeddings.weight)
    bound = alpha / (ids.shape[1] * clean.shape[-1]) ** 0.5

    noisy.train()
    noise = (embeddings(ids) - clean).abs()
    assert float(noise.max()) <= bound * (1 + 1e-5)
    assert float(noise.max()) > 0.9 * bound  # uniform on [-bound, bound]: the largest of ~1,500 draws
    with torch.no_grad():
        assert torch.equal(embeddings(ids), clean)  # autograd off (generate's inference mode): no noise
    train_logits = noisy(ids).logits.detach()
    noisy.eval()
    assert torch.equal(embeddings(ids), clean)  # eval mode, even with autograd on
    eval_logits, plain_logits = noisy(ids).logits.detach(), plain.eval()(ids).logits.detach()
    assert torch.equal(eval_logits, plain_logits)  # eval: bit-identical with and without alpha
    assert not torch.allclose(train_logits, eval_logits, atol=1e-4)  # no dropout here: only the noise differs


def test_neftune_leaves_generation_unchanged(tiny_models):
    plain = module_with_model(tiny_models["llama"]).model.eval()
    module = module_with_model(tiny_models["llama"], neftune_noise_alpha=15.0)
    noisy, tokenizer = module.model, module.tokenizer  # pad token set (EOS), as generate needs
    expected = generate(plain, tokenizer, PROMPTS, max_new_tokens=8)
    assert generate(noisy.eval(), tokenizer, PROMPTS, max_new_tokens=8) == expected
    assert generate(noisy.train(), tokenizer, PROMPTS, max_new_tokens=8) == expected  # e.g. right after fit


# -- the CLI ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_fit_with_all_three_variants_exports_a_plain_peft_adapter(tiny_models, tokenizer, tmp_path):
    base = str(tiny_models["llama"])
    done = run_cli(
        "fit",
        "--config",
        CONFIG,
        "--model.model_name",
        base,
        "--model.lora_r",
        "4",
        "--model.init_lora_weights",
        "pissa",
        "--model.loraplus_lr_ratio",
        "16",
        "--model.neftune_noise_alpha",
        "5",
        "--trainer.max_steps",
        "2",
        "--trainer.precision",
        "32-true",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.limit_val_batches",
        "0",
        "--samples.samples_per_task",
        "0",
        "--data.tasks",
        "[bool_q]",
        "--data.max_examples_per_task",
        "16",
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.default_root_dir",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    adapter = tmp_path / "adapter_last"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["init_lora_weights"] == "pissa"
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    with torch.no_grad():
        assert torch.isfinite(loaded(probe_ids(tokenizer)).logits).all()
