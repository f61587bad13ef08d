"""Checkpoints that hold only what trains: the adapter (or, fully fine-tuned, every weight).

A LoRA ``.ckpt`` then weighs about 2% of the base model. Loading checks the file against the
module before Lightning copies anything: a checkpoint of another base or another rank is one
:class:`CheckpointMismatchError` naming the first weight that does not fit.
"""

from __future__ import annotations

from typing import Any

from lora_lightning.errors import UserInputError


class CheckpointMismatchError(UserInputError):
    """A checkpoint whose weights do not fit this module's trainable parameters."""


class TrainableCheckpointing:
    """LightningModule hooks: save the trainable weights and the loss history, check them on load."""

    strict_loading = False  # the frozen base is not in the checkpoint

    def trainable_names(self) -> set[str]:
        return {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["loss_history"] = self.history
        checkpoint["base_model_path"] = self.base_model_path

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = checkpoint.get("loss_history", self.history)
        if "state_dict" not in checkpoint:
            return  # FSDP2: the strategy has loaded the weights into their shards already
        state = checkpoint["state_dict"]
        missing = sorted(self.trainable_names() - set(state))
        if missing:
            raise CheckpointMismatchError(
                f"checkpoint lacks {len(missing)} trainable weights of this model (first: {missing[0]}); "
                "it was written for another base model or LoRA setting"
            )
        own = dict(self.named_parameters())
        wrong = [k for k in sorted(state) if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
        if wrong:
            raise CheckpointMismatchError(
                f"checkpoint weight {wrong[0]} has shape {tuple(state[wrong[0]].shape)} but this model's is "
                f"{tuple(own[wrong[0]].shape)}; it was written with another lora_r or base model"
            )
