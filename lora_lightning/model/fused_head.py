"""The LM head and its cross-entropy, a chunk of tokens at a time, in bounded memory.

Applying the head chunk by chunk through autograd still keeps every chunk's float32 logits (the
log-softmax output) until backward: ``tokens x vocabulary x 4`` bytes, 400 MB for 2,048 completion
tokens of a 49,152-token vocabulary. :class:`ChunkedHeadCrossEntropy` keeps none: its forward
computes each chunk's logits, keeps only their log-sum-exp (one float per token) and drops them;
its backward computes each chunk's logits again and turns them into the gradient of the hidden
states, and of the head weight (and bias) only when they train. The price is one more head matmul
per chunk in backward; the memory is one chunk's logits (:data:`LOGITS_BUDGET`), however many
tokens the batch has.

The arithmetic is the plain path's: the matmul in the autocast dtype when autocast is on (else in
the inputs' dtype), logits cast to float32, the cross-entropy and its gradient in float32, the
gradient cast back to the matmul dtype for the two backward matmuls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOGITS_BUDGET = 2**24
"""Most logits one chunk holds: 64 MB in float32 (341 tokens of a 49,152-token vocabulary)."""


def chunk_rows(vocab: int, chunk_tokens: int) -> int:
    """Tokens per chunk: at most ``chunk_tokens``, and at most :data:`LOGITS_BUDGET` logits."""
    return max(1, min(chunk_tokens, LOGITS_BUDGET // max(vocab, 1)))


def matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's when it is on, else the inputs' common dtype."""
    device = hidden.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


class ChunkedHeadCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of ``hidden @ weight.T + bias`` against ``targets``, float32, chunked.

    ``hidden`` is ``(tokens, width)``, ``weight`` ``(vocabulary, width)``, ``targets`` ``(tokens,)``
    (all valid class indices). Forward saves the inputs and one log-sum-exp per token, no logits.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        rows: int,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        n = hidden.shape[0]
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
            for start in range(0, n, rows):
                end = min(start + rows, n)
                logits = F.linear(hidden[start:end].to(dtype), w, b).float()
                lse[start:end] = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, targets[start:end, None]).squeeze(1)
                losses[start:end] = lse[start:end] - picked
                del logits
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.rows, ctx.dtype = rows, dtype
        return losses

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_losses: torch.Tensor):  # type: ignore[override]
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        rows, dtype, n = ctx.rows, ctx.dtype, hidden.shape[0]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
        grad_losses = grad_losses.float()
        with torch.autocast(hidden.device.type, enabled=False):
            w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
            for start in range(0, n, rows):
                end = min(start + rows, n)
                h = hidden[start:end].to(dtype)
                # d loss / d logits = (softmax - one_hot(target)) * upstream gradient, in float32
                grad = F.linear(h, w, b).float().sub_(lse[start:end, None]).exp_()
                grad[torch.arange(end - start, device=grad.device), targets[start:end]] -= 1.0
                grad = grad.mul_(grad_losses[start:end, None]).to(dtype)
                if need_hidden:
                    grad_hidden[start:end] = grad @ w
                if need_weight:
                    grad_weight += (grad.t() @ h).float()
                if need_bias:
                    grad_bias += grad.float().sum(0)
                del grad
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
            None,
            None,
        )


def plain_chunked_losses(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int = 2048
) -> torch.Tensor:
    """The head through autograd, ``chunk_tokens`` at a time: every chunk's float32 logits stay for
    backward. For heads that are not a plain ``nn.Linear`` (an adapter on the head), and as reference."""
    parts = [
        F.cross_entropy(
            head(hidden[start : start + chunk_tokens]).float(), targets[start : start + chunk_tokens], reduction="none"
        )
        for start in range(0, int(targets.numel()), chunk_tokens)
    ]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def chunked_token_losses(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int = 2048
) -> torch.Tensor:
    """Cross-entropy (float32) of ``head(hidden)`` at each row of ``hidden`` against ``targets``.

    A plain ``nn.Linear`` head (every transformers causal LM's, tied or not) goes through
    :class:`ChunkedHeadCrossEntropy` (bounded memory); any other head through the plain path.
    """
    if type(head) is not torch.nn.Linear:
        return plain_chunked_losses(head, hidden, targets, chunk_tokens)
    if targets.numel() == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    rows = chunk_rows(head.weight.shape[0], chunk_tokens)
    dtype = matmul_dtype(hidden, head.weight)
    return ChunkedHeadCrossEntropy.apply(hidden, head.weight, head.bias, targets, rows, dtype)
