"""The module's side of the data handoff: the tokenizer, prompt format and length it works with.

They come from the datamodule the Trainer runs with (its ``handoff()``:
:class:`~lora_lightning.data.handoff.DataHandoff`), passed to :meth:`DataConnection.connect`; the
tokenizer is loaded once, by the datamodule. A Trainer run without such a datamodule (plain
dataloaders) gets the model's own tokenizer, the prompt format ``auto`` resolves for it, and 512 tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_lightning.data.handoff import DataHandoff
from lora_lightning.errors import UserInputError
from lora_lightning.loading import load_tokenizer, resolve_model_path
from lora_lightning.model.building import base_name
from lora_lightning.prompts import resolve_prompt_format

STANDALONE_MAX_LENGTH = 512  # without a datamodule's handoff: the datamodule's own default


class DataConnection:
    """LightningModule hooks and accessors for the data handoff (``self.data``)."""

    data: DataHandoff | None

    def tokenizer_source(self) -> str:
        """Where this model's tokenizer comes from: the adapter folder, else the base model."""
        settings = self.settings
        return settings.adapter or resolve_model_path(base_name(settings), settings.base_cache_dir)

    def connect(self, data: DataHandoff) -> None:
        """Takes the tokenizer, prompt format and length of the data this module trains and scores on;
        one line and stop when that tokenizer is not this model's (another source than the adapter or base)."""
        ours = self.tokenizer_source()
        if str(ours) != str(data.tokenizer_source) and not same_folder(ours, data.tokenizer_source):
            raise UserInputError(
                f"data.tokenizer {data.tokenizer_source!r} is not the model's ({ours!r}): tokenize with the "
                "model's own (the CLI links data.tokenizer to model.adapter or model.model_name)"
            )
        self.data = data

    def setup(self, stage: str) -> None:
        self.connect_data()

    def connect_data(self) -> None:
        """Connects to the Trainer's datamodule when it hands its data over, else to the model's own tokenizer."""
        if self.data is not None:
            return
        datamodule = getattr(self._trainer, "datamodule", None)
        if hasattr(datamodule, "handoff"):
            return self.connect(datamodule.handoff())
        source = self.tokenizer_source()
        tokenizer = load_tokenizer(source, self.settings.trust_remote_code)
        prompt_format = resolve_prompt_format("auto", tokenizer, self.settings.adapter)
        self.data = DataHandoff(tokenizer, source, prompt_format, STANDALONE_MAX_LENGTH)

    @property
    def tokenizer(self) -> Any:
        return self.data.tokenizer if self.data is not None else None

    @property
    def prompt_format(self) -> str | None:
        """``plain`` or ``chat``: how prompts were laid out in training (and are in scoring and generation)."""
        return self.data.prompt_format if self.data is not None else None


def same_folder(a: str, b: str) -> bool:
    """Whether two paths name one existing folder (a Hub id names none)."""
    return Path(a).is_dir() and Path(b).is_dir() and Path(a).resolve() == Path(b).resolve()
