"""``torch.compile`` for training steps: each decoder block compiled, run compiled in training only.

Why it is on in ``configs/default.yaml``: inductor fuses a block's pointwise work (norms, rotary,
activations, LoRA dropout and scaling) into few kernels, and its partitioner keeps for backward only
what is dear to recompute, so a training step holds far fewer and smaller activations: on the bench
workload (SmolLM2-135M, batch 8, bf16-mixed, CPU) peak RSS 2.4 GB instead of 3.5 GB at the same
tokens/s (numbers and dates in docs/performance.md). The price is the first step: up to
a minute of compiling on a 2-core CPU (inductor caches what it built, so later runs start sooner).

Why blocks: the blocks of a model share one code path, so dynamo traces and compiles it once for all
of them, with dynamic shapes (packed rows change length every batch; one graph serves every
length); embeddings, the mask, the head and the loss stay eager (they vary by model, gain little).
Why the first block's input is made to carry gradients: under LoRA that input (the frozen
embedding's output) needs no gradient and every later block's does; dynamo guards on that, so the
first block as it is would trace and compile a second graph (SmolLM2-135M, 2-core CPU, empty cache:
90 s of compiling with it, 68 s without, 59 s once floats are specialized too). Run eager instead, it
drew its dropout masks with torch's generator and kept eager activations. So a block with trainable
weights gets its input as a detached leaf that requires gradients: the one graph serves it, and
backward computes one gradient it throws away (the block's input, a few matmuls of one block).
Why dropout changes on CPU: inductor draws a CPU dropout mask one Philox engine per element, which
made LoRA dropout half of an all-linear step; compiled blocks draw it with a counter-based hash
instead, the same distribution (model.counter_dropout).
Why a memory budget (``model.compile_memory_budget``): inductor's partitioner, by default, saves for
backward what is fastest, not what is smallest; below 1 it solves a knapsack for the least
recomputation that keeps the saved activations under that share (torch's
``activation_memory_budget``), a trade of tokens/s for peak memory the user picks.
Why training only: validation, test and generation run under ``no_grad`` in eval mode, generation
with shapes that change every token, so a compiled graph there would recompile for little gain; a
block in eval mode, or with gradients off, runs its eager ``forward``.

On CPU inductor needs a C++ compiler (``g++`` or ``clang++``, or ``$CXX``); without one, training
says so once and runs eager. ``TORCH_COMPILE_DISABLE=1`` (a torch setting) turns compiling off everywhere.
"""

from __future__ import annotations

from typing import Any

import torch
import torch._functorch.config as functorch_config
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lora_lightning.errors import UserInputError
from lora_lightning.model.blocks import decoder_blocks
from lora_lightning.model.counter_dropout import use_counter_dropout


def has_cpp_compiler() -> bool:
    """Whether inductor finds the C++ compiler it needs for CPU kernels."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or a torch without this helper
        return False
    return True


class TrainingCompiled:
    """A block's ``forward``: compiled while the block trains with gradients on and has trainable
    weights, eager otherwise."""

    def __init__(self, block: torch.nn.Module, options: dict[str, Any] | None = None, memory_budget: float = 1.0):
        self.block, self.eager = block, block.forward
        # floats (scales, dropout rates) are constants: traced as inputs they make dynamo restart
        # its analysis once (about 9 s of the first step), so specialize them
        compiled = torch.compile(self.eager, dynamic=True, options=options)
        compiled = torch._dynamo.config.patch(specialize_float=True)(compiled)
        # the partitioner reads these when the first call compiles (and a recompile, later)
        partitioner = {**PARTITIONER_OPTIONS, "activation_memory_budget": memory_budget}
        self.compiled = functorch_config.patch(partitioner)(compiled)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not (self.block.training and torch.is_grad_enabled()):
            return self.eager(*args, **kwargs)
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor) and not hidden.requires_grad:
            if not any(p.requires_grad for p in self.block.parameters()):
                return self.eager(*args, **kwargs)  # nothing to train here: no graph, no backward
            hidden = hidden.detach().requires_grad_()  # the graph every later block uses (module docstring)
            if args:
                args = (hidden, *args[1:])
            else:
                kwargs = {**kwargs, "hidden_states": hidden}
        return self.compiled(*args, **kwargs)


# inductor's options for CPU blocks. Their dropout masks come from a counter-based hash of one seed per
# call (model.counter_dropout); with fallback_random that seed is one aten draw whose result the
# kernels read, where inductor would recompute its own draw in every vector of a kernel (1.5 instead
# of 7.9 ms of dropout for a 3,072 x 576 LoRA input, forward and backward).
COMPILE_OPTIONS: dict[str, Any] = {"fallback_random": True}


# The partitioner's: ``ban_recompute_materialized_backward`` off lets it recompute in backward a cheap
# value that backward must write out anyway (a grouped-query attention's keys and values repeated per
# head, from the unrepeated ones): on the bench workload (SmolLM2-135M) malloc's peak is then 2,169
# instead of 2,324 MB and peak RSS about 250 MB lower, at the same tokens/s (docs/performance.md).
# ``ban_recompute_used_far_apart`` off lets it recompute the MLP's product SiLU(gate) x up, which
# down's dropout (a region it must recompute, model.counter_dropout) reads, from the gate and up
# outputs it keeps anyway; with the ban it kept that product in float32 instead (11.5 MB per block
# on a bench batch, where down's dropped-out input had been 5.8 MB in bfloat16).
PARTITIONER_OPTIONS: dict[str, Any] = {
    "ban_recompute_materialized_backward": False,
    "ban_recompute_used_far_apart": False,
}


def check_memory_budget(budget: float) -> None:
    """``model.compile_memory_budget`` is a share of the activations: in (0, 1]."""
    if not 0.0 < budget <= 1.0:
        raise UserInputError(
            f"model.compile_memory_budget must be in (0, 1] (the share of a compiled block's activations kept "
            f"for backward; 1 keeps what is fastest), not {budget}"
        )


def compile_blocks(model: Any, device_type: str, memory_budget: float = 1.0) -> int:
    """Compiles every decoder block of ``model`` in place for training; the number compiled (0 when
    the device lacks what inductor needs). Names, weights and the state dict are unchanged.
    ``memory_budget``: the share of each block's activations kept for backward (:func:`check_memory_budget`)."""
    if device_type == "cpu" and not has_cpp_compiler():
        rank_zero_warn(
            "model.compile: no C++ compiler found (install g++ or clang++, or set CXX), which torch.compile "
            "needs on CPU; training runs eager. Set model.compile false to silence this."
        )
        return 0
    blocks = decoder_blocks(model, "set model.compile false to train it eager")
    for block in blocks:
        if device_type == "cpu":
            use_counter_dropout(block)
        if not isinstance(block.forward, TrainingCompiled):
            options = COMPILE_OPTIONS if device_type == "cpu" else None
            block.forward = TrainingCompiled(block, options, memory_budget)
    rank_zero_info(f"model.compile: {len(blocks)} decoder blocks compiled for training steps (the first step compiles)")
    return len(blocks)
