"""FSDP2 for a frozen base too large to copy into every process: each decoder block sharded over the ranks.

``configs/fsdp.yaml`` trains with :class:`FSDP2Strategy` (Lightning's ``ModelParallelStrategy``,
data-parallel only). ``LoRAModule.configure_model`` then calls :func:`shard_model`: ``fully_shard``
on every decoder block (found from the model's own ``_no_split_modules``: ``GPT2Block``,
``GPTNeoXLayer``, ``LlamaDecoderLayer``, ...) and on the root (embeddings, final norm, head). Between
forward passes each rank holds 1/world of every weight, the frozen base in the dtype ``base_dtype``
chose (bfloat16 under ``bf16-mixed``) and the LoRA weights, float32, inside their blocks; a block's
weights are all-gathered for its forward and again for its backward, and the LoRA gradients are
reduce-scattered and averaged over the ranks, as DDP averages them, so the step loss needs nothing new.

Two things run outside the root's ``forward``, and are registered as FSDP forward methods so its
weights are gathered for them: the completion-only loss (the body's hidden states, then the head a
chunk at a time: :func:`shard_model` returns it, and the module passes it to the loss) and ``generate``
(with ``synced_gpus``: every rank keeps stepping until all are done).

Only ``fit`` shards. ``validate``/``test``/``predict`` under the overlay keep a whole model per rank,
like DDP: generation takes a different number of forward passes per rank, and a sharded forward is
collective. A base that does not fit one device is evaluated from its exported adapter elsewhere.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from lora_lightning.model.blocks import decoder_blocks
from lora_lightning.model.loss import TokenLosses, compute_token_losses


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as sharded data parallelism (FSDP2) for LoRA.

    Every process is one data-parallel rank (``data_parallel_size`` = nodes x devices, no tensor
    parallelism), so ``devices`` and ``num_nodes`` are all a config sets. Checkpoints hold what
    trains: the trainable weights and their optimizer state, gathered to rank 0 into one ``.ckpt``
    file (the frozen base, sharded in memory, is never gathered or written).

    Args:
        save_distributed_checkpoint: False (the default here): one gathered ``.ckpt`` file, as
            without FSDP. True: each rank writes its shards into a checkpoint folder.
    """

    def __init__(self, save_distributed_checkpoint: bool = False, **kwargs: Any):
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def lightning_module_state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(
            full_state_dict=not self._save_distributed_checkpoint, cpu_offload=True, ignore_frozen_params=True
        )
        return get_model_state_dict(self.model, options=options)


def is_sharded(model: Any) -> bool:
    """Whether ``model`` is (or holds as its root) an FSDP2 module."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model: Any, mesh: Any) -> TokenLosses:
    """Shards ``model`` in place over ``mesh``: each decoder block, then the root (see the module
    docstring); returns the token-loss function to train it with (its root weights gathered for it)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for block in decoder_blocks(model, "train it with configs/ddp.yaml instead of configs/fsdp.yaml"):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)  # FSDP2 keeps a root gathered unless told
    register_fsdp_forward_method(model, "generate")  # transformers' own method, run by generation
    return as_fsdp_forward(model, compute_token_losses)


def as_fsdp_forward(model: Any, fn: Any) -> TokenLosses:
    """``fn(model, ...)`` run as an FSDP forward of the sharded root ``model``: its weights gathered
    before and released after, as ``torch.distributed.fsdp.register_fsdp_forward_method`` does for a
    method it patches onto the model (here handed back instead of set on the model)."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        state = model._get_fsdp_state()
        args, kwargs = state._pre_forward(model, args, kwargs)
        return state._post_forward(model, args, fn(model, *args, **kwargs))

    return forward


def parameter_bytes(model: Any) -> tuple[int, int]:
    """(bytes of parameters this rank holds between forward passes, bytes of the whole model's):
    equal without sharding; about 1/world of it for a sharded model."""
    from torch.distributed.tensor import DTensor

    held = whole = 0
    for p in model.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        held += local.numel() * local.element_size()
        whole += p.numel() * p.element_size()
    return held, whole


def gathered_state_dict(model: Any, trainable_only: bool) -> dict[str, torch.Tensor] | None:
    """The full weights of a sharded model on CPU, for an export; None for a model that is not sharded.

    Collective: every rank must call it. ``trainable_only`` gathers only what trains (the adapter),
    never the frozen base.
    """
    if not is_sharded(model):
        return None
    from torch.distributed.tensor import DTensor

    keep = {n for n, p in model.named_parameters() if p.requires_grad} if trainable_only else None
    out = {}
    for name, value in model.state_dict().items():
        if keep is None or name in keep:
            out[name] = (value.full_tensor() if isinstance(value, DTensor) else value).detach().cpu()
    return out


def gradient_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients as a plain tensor, summed over the ranks' shards when sharded."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.get_total_norm([g.float() for g in grads])
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
