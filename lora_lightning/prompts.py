"""How a prompt and its answer are laid out as text, decided once and used everywhere.

``plain`` is FLAN text (prompt, newline, completion); ``chat`` is the tokenizer's chat template
with the prompt as the user turn and the completion as the assistant turn; ``auto`` (the
default) is ``chat`` for a tokenizer that has a chat template (an instruction-tuned model is
tuned in the layout it already knows) and ``plain`` for one that has none (GPT-2, Pythia).
The resolved format is written beside every exported adapter (``prompt_format.json``) and read
back by ``generate``, ``predict`` and ``test``, so an adapter is always prompted as it was trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lora_lightning.errors import UserInputError

PROMPT_FORMATS = ("auto", "plain", "chat")
FORMAT_FILE = "prompt_format.json"


def resolve_prompt_format(requested: str, tokenizer: Any, adapter: str | Path | None = None) -> str:
    """``plain`` or ``chat``: the requested format, or for ``auto`` the one an adapter folder
    recorded, else ``chat`` when the tokenizer has a chat template and ``plain`` when not."""
    if requested not in PROMPT_FORMATS:
        raise UserInputError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {requested!r}")
    if requested == "auto":
        recorded = recorded_prompt_format(adapter) if adapter is not None else None
        return recorded or ("chat" if getattr(tokenizer, "chat_template", None) else "plain")
    if requested == "chat" and not getattr(tokenizer, "chat_template", None):
        raise UserInputError("prompt_format is chat but the tokenizer has no chat template; use plain or auto")
    return requested


def recorded_prompt_format(folder: str | Path) -> str | None:
    """The format recorded in an adapter folder; None when it records none."""
    for name in (FORMAT_FILE, "training_history.json"):  # the history held it before prompt_format.json
        path = Path(folder) / name
        if path.is_file():
            value = json.loads(path.read_text()).get("prompt_format")
            if value in ("plain", "chat"):
                return value
    return None


def write_prompt_format(folder: str | Path, prompt_format: str) -> None:
    (Path(folder) / FORMAT_FILE).write_text(json.dumps({"prompt_format": prompt_format}) + "\n")


def render_prompt(tokenizer: Any, prompt: str, prompt_format: str = "plain", separator: str = "\n") -> str:
    """The text before the answer, the same in training and in generation.

    ``plain``: FLAN text, the prompt then ``separator``. ``chat``: the tokenizer's chat template
    with the prompt as the user turn, up to the start of the assistant turn.
    """
    if prompt_format == "plain":
        return prompt + separator
    if prompt_format != "chat":
        raise UserInputError(f"a resolved prompt format is plain or chat, got {prompt_format!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise UserInputError("the tokenizer has no chat template; use prompt_format plain or auto")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def render_completion(tokenizer: Any, prompt: str, completion: str, prompt_format: str = "plain") -> str:
    """The answer text; for ``chat`` the assistant turn as the template writes it (end-of-turn included)."""
    if prompt_format == "plain":
        return completion
    head = render_prompt(tokenizer, prompt, prompt_format)
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], tokenize=False
    )
    if not full.startswith(head):
        raise UserInputError(
            "the tokenizer's chat template does not render the user turn as a prefix of the "
            "conversation; use prompt_format plain"
        )
    return full[len(head) :]
