"""The bounded-memory head (model/fused_head.py): the plain path's losses and gradients, no logits kept.

Compared with the head applied through autograd chunk by chunk (the previous path, kept as
``plain_chunked_losses``) and with the model's full logits, on tiny GPT-2 (head tied to the
embeddings), GPT-NeoX and Llama, in float32 and under bf16 autocast, with LoRA (gradients reach the
body through the hidden states) and fully fine-tuned (the head weight gets its gradient too).
"""

import pytest
import torch
import torch.nn.functional as F

from lora_lightning.loading import load_causal_lm
from lora_lightning.model import fused_head, loss
from lora_lightning.model.fused_head import chunked_token_losses, plain_chunked_losses
from lora_lightning.model.lora import apply_lora
from lora_lightning.model.loss import token_losses

# float32: the same math in another order; bf16 autocast: the same bf16 matmuls, gradients summed in
# float32 over chunks here but in bf16 by autograd on the plain path.
TOLERANCES = {False: dict(rtol=1e-4, atol=1e-5), True: dict(rtol=2e-2, atol=2e-3)}


def close(a, b, autocast):
    tol = TOLERANCES[autocast]
    return torch.allclose(a.float(), b.float(), rtol=tol["rtol"], atol=tol["atol"] * float(b.abs().max()))


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(fused_head, "LOGITS_BUDGET", 7 * 1000)  # 7 tokens a chunk at 1,000 words: many chunks


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_function_matches_the_plain_path(small_chunks, autocast, bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 1000, bias=bias)
    hidden = torch.randn(50, 32, requires_grad=True)
    targets = torch.randint(0, 1000, (50,))
    weights = torch.linspace(0.5, 2.0, 50)  # an upstream gradient that is not all ones
    results = []
    for fn in (chunked_token_losses, plain_chunked_losses):
        head.zero_grad()
        hidden.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses = fn(head, hidden, targets)
        assert losses.dtype == torch.float32
        (losses * weights).sum().backward()
        results.append([losses.detach(), hidden.grad, head.weight.grad] + ([head.bias.grad] if bias else []))
    for new, old in zip(*results):
        assert close(new, old, autocast)
    if not autocast:  # and the textbook definition
        expected = F.cross_entropy(head(hidden), targets, reduction="none")
        assert torch.allclose(results[0][0], expected.detach(), atol=1e-5)


def test_frozen_head_gets_no_gradient_and_empty_targets_work():
    head = torch.nn.Linear(16, 100).requires_grad_(False)
    hidden = torch.randn(5, 16, requires_grad=True)
    chunked_token_losses(head, hidden, torch.randint(0, 100, (5,))).sum().backward()
    assert head.weight.grad is None and head.bias.grad is None and hidden.grad is not None
    empty = chunked_token_losses(head, hidden[:0], torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,) and empty.dtype == torch.float32


def saved_bytes(fn, *args):
    """Bytes autograd keeps for backward while ``fn(*args)`` runs (parameters not counted)."""
    params = {p.data_ptr() for p in args[0].parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return total


def test_forward_keeps_no_logits():
    head = torch.nn.Linear(64, 5000, bias=False)
    hidden = torch.randn(300, 64, requires_grad=True)
    targets = torch.randint(0, 5000, (300,))
    logits_bytes = 300 * 5000 * 4
    assert saved_bytes(plain_chunked_losses, head, hidden, targets) >= logits_bytes
    # the hidden states (kept by both), the targets and one log-sum-exp per token
    assert saved_bytes(chunked_token_losses, head, hidden, targets) <= 300 * (64 * 4 + 8 + 4)


def batch(vocab, rows=3, length=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0  # one padded row
    labels = ids.clone()
    labels[:, :15] = -100  # a prompt, then the completion
    labels[mask == 0] = -100
    return ids, mask, labels


def losses_and_grads(model, ids, mask, labels, autocast, completion_only_head=True):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        losses, _ = token_losses(model, ids, mask, labels, completion_only_head=completion_only_head)
    losses.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return losses.detach(), grads


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])
@pytest.mark.parametrize("lora", [True, False])
@pytest.mark.parametrize("autocast", [False, True])
def test_model_losses_and_gradients_equal_the_plain_path(tiny_models, monkeypatch, small_chunks, arch, lora, autocast):
    model = load_causal_lm(str(tiny_models[arch]))
    if lora:
        model = apply_lora(model, r=4, alpha=8, dropout=0.0)
        for name, p in model.named_parameters():  # B = 0 at init would make the LoRA A gradients all zero
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    head = loss.unwrap_causal_lm(model).get_output_embeddings()
    assert type(head) is torch.nn.Linear  # the bounded path is the one taken
    if arch == "gpt2":
        assert head.weight is loss.unwrap_causal_lm(model).get_input_embeddings().weight  # tied
    ids, mask, labels = batch(head.weight.shape[0])
    new_losses, new_grads = losses_and_grads(model, ids, mask, labels, autocast)
    assert (head.weight.grad is None) == lora  # the head weight gets a gradient only when it trains
    with monkeypatch.context() as m:
        m.setattr(loss, "chunked_token_losses", plain_chunked_losses)
        old_losses, old_grads = losses_and_grads(model, ids, mask, labels, autocast)
    full_losses, _ = losses_and_grads(model, ids, mask, labels, autocast, completion_only_head=False)
    assert new_losses.numel() == int((labels[:, 1:] != -100).sum())
    assert close(new_losses, old_losses, autocast) and close(new_losses, full_losses, autocast)
    assert new_grads and new_grads.keys() == old_grads.keys()
    for name in new_grads:
        assert close(new_grads[name], old_grads[name], autocast), name
