"""NEFTune: uniform noise on the input embeddings while training (Jain et al. 2023, arXiv:2310.05914).

The noise is transformers' own hook (the one its Trainer registers for ``neftune_noise_alpha``): on
a forward of the input embedding module *in training mode* it adds noise drawn uniformly from
``[-m, m]`` with ``m = alpha / sqrt(L * d)``, ``L`` the length of the batch's rows (padded, or packed)
and ``d`` the hidden size. It checks ``module.training`` rather than being added and removed around
the fit, so validation, ``test``, ``predict`` and generation samples (all in eval mode) see the model
as it is. It is also skipped with autograd off: ``generate`` runs under ``torch.inference_mode``, so
a model left in train mode after ``fit`` still generates without noise. The hook is not part of the
weights: the exported adapter and checkpoints are what they would be without NEFTune.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from lora_lightning.errors import UserInputError

try:
    from transformers.integrations.neftune import neftune_post_forward_hook
except ImportError:  # transformers < 5 keeps it with the Trainer's utilities
    from transformers.trainer_utils import neftune_post_forward_hook


def check_neftune_alpha(alpha: float | None) -> None:
    """None (off) or a finite alpha >= 0; the paper uses 5 to 15."""
    if alpha is not None and (not math.isfinite(alpha) or alpha < 0):
        raise UserInputError(f"neftune_noise_alpha must be a finite number >= 0 (or null: off), got {alpha!r}")


def noise_when_training(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    """transformers' hook (noise in training mode), only when autograd is on: a training forward."""
    return neftune_post_forward_hook(module, args, output) if torch.is_grad_enabled() else output


def add_neftune(model: Any, alpha: float) -> RemovableHandle:
    """Registers the noise hook on ``model``'s input embeddings (a peft model delegates to its base);
    the handle removes it."""
    check_neftune_alpha(alpha)
    embeddings = model.get_input_embeddings()
    embeddings.neftune_noise_alpha = float(alpha)  # where transformers' hook reads alpha from
    return embeddings.register_forward_hook(noise_when_training)
