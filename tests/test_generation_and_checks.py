"""Rank classification with unscorable options, where generation stops, cut prompts keep BOS, 16-mixed
overflow steps, and a zero batch size: each checked against its definition."""

from types import SimpleNamespace

import pytest
import torch
from conftest import EOS, REPO, run_cli
from tokenizers.processors import TemplateProcessing

from lora_lightning.data.tokenization import encode_pairs, fit_pair
from lora_lightning.errors import TrainingHalted
from lora_lightning.loading import load_causal_lm, load_tokenizer
from lora_lightning.model import generate, scoring
from lora_lightning.model.step_loss import MAX_OVERFLOW_STEPS, StepLoss


def test_an_option_that_cannot_be_scored_never_wins(monkeypatch):
    # the first option's score is NaN (e.g. it did not fit in max_length); the other two are real
    monkeypatch.setattr(scoring, "completion_nll", lambda *args: ([float("nan"), 3.0, 2.0, 5.0, float("nan")], [0] * 5))
    assert scoring.rank_classify(None, None, ["p", "q"], [["a", "b", "c"], ["d", "e"]], 64) == [2, 0]


def test_a_prompt_cut_from_the_left_keeps_its_leading_special_tokens(tiny_models):
    bos = 7
    assert fit_pair([bos, 1, 2, 3, 4, 5], [8, 9], max_length=5, special_ids={bos}).input_ids == [bos, 4, 5, 8, 9]
    tokenizer = load_tokenizer(str(tiny_models["llama"]))
    tokenizer._tokenizer.post_processor = TemplateProcessing(  # a Llama-style tokenizer: BOS before every text
        single=f"{EOS} $A", special_tokens=[(EOS, tokenizer.eos_token_id)]
    )
    long_prompt = " ".join(f"word{i}" for i in range(200))
    (example,) = encode_pairs(tokenizer, [long_prompt], ["yes"], max_length=32)
    assert len(example.input_ids) == 32 and example.input_ids[0] == tokenizer.eos_token_id
    assert example.input_ids[1] != tokenizer.eos_token_id  # the cut happened after BOS


def test_generation_stops_at_every_end_id_of_the_generation_config(tiny_models):
    tokenizer = load_tokenizer(str(tiny_models["llama"]))
    model = load_causal_lm(str(tiny_models["llama"])).eval()
    prompt = "Concepts: dog, ball, park"
    free = tokenizer(generate(model, tokenizer, [prompt], max_new_tokens=12))["input_ids"][0]
    assert len(free) > 3
    first = free[0]
    # a chat model ends its turn with its own id, listed in generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, first]
    stopped = generate(model, tokenizer, [prompt], max_new_tokens=12)[0]
    assert tokenizer(stopped)["input_ids"] == [first]


class FakeModule:
    """What StepLoss reads from a LoRAModule: the model, the trainer's precision plugin, hparams, log."""

    def __init__(self, scaler):
        self.model = torch.nn.Linear(2, 2)
        self.trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))
        self.hparams = SimpleNamespace(nonfinite="stop")
        self.global_step, self.current_epoch, self.logged = 0, 0, {}

    def log(self, name, value, **kwargs):
        self.logged[name] = value

    def gradients(self, value):
        for p in self.model.parameters():
            p.grad = torch.full_like(p, value)


def test_16_mixed_overflow_steps_do_not_stop_the_run_but_a_long_streak_does():
    module = FakeModule(scaler=object())
    checks = StepLoss(module)
    optimizer = torch.optim.SGD(module.model.parameters(), lr=0.1)
    for _ in range(MAX_OVERFLOW_STEPS - 1):  # the GradScaler skips these steps and lowers its scale
        module.gradients(float("inf"))
        checks.check_gradients(optimizer)
    module.gradients(1.0)
    checks.check_gradients(optimizer)  # a finite step ends the streak
    assert checks.overflow_streak == 0 and "train/grad_norm" in module.logged
    with pytest.raises(TrainingHalted, match="gradient overflows in a row"):
        for _ in range(MAX_OVERFLOW_STEPS):
            module.gradients(float("inf"))
            checks.check_gradients(optimizer)
    # without a scaler (bf16-mixed, 32-true) a non-finite gradient stops at once
    plain = FakeModule(scaler=None)
    plain.gradients(float("nan"))
    with pytest.raises(TrainingHalted, match="non-finite gradient norm"):
        StepLoss(plain).check_gradients(torch.optim.SGD(plain.model.parameters(), lr=0.1))


def test_a_zero_batch_size_is_one_line(tmp_path):
    out = run_cli(
        "fit",
        "--config",
        str(REPO / "configs" / "default.yaml"),
        "--data.batch_size",
        "0",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("lora-lightning: error: data.batch_size must be positive")
    assert not (tmp_path / "run").exists()
