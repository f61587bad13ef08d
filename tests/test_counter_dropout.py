"""Compiled CPU blocks draw dropout masks with SplitMix64 of a counter (model.counter_dropout).

Checked against the definition: the hash equals SplitMix64 written out in Python integers; masks drop
a fraction ``p`` with no correlation between neighbouring elements or between calls; the compiled
forward and its backward use the same mask, scaled by 1 / (1 - p); ``torch.manual_seed`` reproduces
it; eval mode and ``p = 0`` are the identity; ``compile_blocks`` gives every block's dropout the hash.
"""

import pytest
import torch
from conftest import ARCHS

from lora_lightning.model.blocks import decoder_blocks
from lora_lightning.model.building import build_model
from lora_lightning.model.compiling import compile_blocks
from lora_lightning.model.counter_dropout import CounterDropout, keep_mask, splitmix64, use_counter_dropout
from lora_lightning.model.module import LoRAModule

MASK64 = (1 << 64) - 1


def splitmix64_reference(state: int) -> int:
    """SplitMix64 (Steele, Lea and Flood 2014; Vigna's C code) on unsigned 64-bit integers."""
    z = (state + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def test_hash_is_splitmix64():
    seed = -1234567890123456789
    counter = torch.arange(1000, dtype=torch.int64)
    ours = splitmix64(counter, torch.tensor(seed)).tolist()
    # the stream that starts at seed * gamma: output k is the state (seed + k) * gamma, mixed
    gamma = 0x9E3779B97F4A7C15
    expected = [splitmix64_reference(((seed + k - 1) * gamma) & MASK64) for k in range(1000)]
    assert [v & MASK64 for v in ours] == expected


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_masks_drop_p_independently(p):
    shape = (1024, 1536)
    a = keep_mask(torch.empty(shape), p, torch.tensor(7))
    b = keep_mask(torch.empty(shape), p, torch.tensor(8))
    n = a.numel()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs((~a).float().mean().item() - p) < 5 * sigma
    # neighbours along a row and down a column, and the same element in two calls: both dropped with p^2
    pairs = {
        "row neighbours": (~a[:, 1:] & ~a[:, :-1]),
        "column neighbours": (~a[1:] & ~a[:-1]),
        "two calls": (~a & ~b),
    }
    for name, both in pairs.items():
        pair_sigma = (p * p * (1 - p * p) / both.numel()) ** 0.5
        assert abs(both.float().mean().item() - p * p) < 5 * pair_sigma, name
    # every column drops about p (a hash with a weak low part would stripe by column)
    per_column = (~a).float().mean(0)
    assert (per_column - p).abs().max().item() < 6 * (p * (1 - p) / shape[0]) ** 0.5


@pytest.mark.parametrize("dynamic", [False, True])  # compiled blocks use dynamic shapes
def test_compiled_forward_and_backward_share_one_mask(dynamic, dynamo_on):
    p = 0.25
    dropout = CounterDropout(p)
    weight = torch.randn(512, 384)

    @torch.compile(dynamic=dynamic)
    def loss_of(x):
        return (dropout(x) * weight).sum(), dropout(x)

    x = torch.randn(512, 384, requires_grad=True)
    torch.manual_seed(3)
    loss, second = loss_of(x)
    loss.backward()
    kept = x.grad != 0
    # the gradient is the mask times 1 / (1 - p) times the upstream gradient
    torch.testing.assert_close(x.grad, kept * weight / (1 - p))
    assert abs((~kept).float().mean().item() - p) < 0.01
    # the second call in the same graph drew its own mask
    assert not torch.equal(second != 0, kept)

    torch.manual_seed(3)  # the seed comes from torch's generator: the same seed, the same mask
    again, _ = loss_of(x.detach())
    torch.testing.assert_close(again, loss.detach())
    assert not torch.equal(loss_of(x.detach())[0], loss.detach())


def test_eval_and_zero_rate_are_identity(dynamo_on):
    x = torch.randn(64, 32)
    assert torch.equal(torch.compile(CounterDropout(0.3).eval())(x), x)
    assert torch.equal(torch.compile(CounterDropout(0.0))(x), x)
    eager = CounterDropout(0.3)  # outside a compiled graph: torch's own dropout
    torch.manual_seed(0)
    ours = eager(x)
    torch.manual_seed(0)
    assert torch.equal(ours, torch.nn.functional.dropout(x, 0.3, True))


@pytest.mark.parametrize("arch", ARCHS)
def test_compiled_blocks_use_counter_dropout(arch, tiny_models):
    model = build_model(LoRAModule(model_name=str(tiny_models[arch]), lora_r=4, lora_dropout=0.1).settings, None).model
    lora = [m for n, m in model.named_modules() if n.endswith("lora_dropout.default")]
    assert lora and all(type(m) is torch.nn.Dropout and m.p == 0.1 for m in lora)
    assert compile_blocks(model, "cpu") == 2
    assert all(type(m) is CounterDropout and m.p == 0.1 for m in lora)
    assert sum(use_counter_dropout(block) for block in decoder_blocks(model, "")) == 0  # nothing left
