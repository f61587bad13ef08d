"""Logs a few generations per task to TensorBoard at each validation, to watch behaviour, not only loss."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lora_lightning.model.generation import generate, prompt_budget
from lora_lightning.model.sharding import is_sharded


class GenerationSamples(Callback):
    """At the end of each validation during ``fit``: greedy completions of the first
    ``samples_per_task`` held-out examples of every task, as a text table (prompt, reference,
    output) under ``samples/<task>`` in TensorBoard. Prompts are shortened as ``test`` shortens them
    (within ``max_length`` and the model's context, leaving room for the task's ``max_new_tokens``).

    Args:
        samples_per_task: Examples per task to generate for (0 turns this off).
        max_prompt_chars: Prompts are shortened to this many characters in the table.
    """

    def __init__(self, samples_per_task: int = 2, max_prompt_chars: int = 400):
        self.samples_per_task = samples_per_task
        self.max_prompt_chars = max_prompt_chars
        self._examples: dict[str, list[dict]] | None = None

    def on_validation_end(self, trainer: Trainer, pl_module: Any) -> None:
        if (
            self.samples_per_task <= 0
            or trainer.sanity_checking
            or trainer.state.fn != "fit"
            or not (trainer.is_global_zero or is_sharded(pl_module.model))  # sharded: all ranks take part
            or not hasattr(trainer.datamodule, "eval_examples")
        ):
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        if self._examples is None:
            self._examples = trainer.datamodule.eval_examples(limit=self.samples_per_task)
        was_training = pl_module.model.training
        pl_module.model.eval()
        for task, examples in self._examples.items():
            budget = examples[0]["max_new_tokens"] if examples else 1
            outputs = generate(
                pl_module.model,
                pl_module.tokenizer,
                [e["prompt"] for e in examples],
                budget,
                prompt_format=pl_module.prompt_format,
                max_prompt_tokens=prompt_budget(pl_module.data.max_length, budget),
            )
            table = ["| prompt | reference | output |", "| --- | --- | --- |"]
            table += [
                f"| {cell(e['prompt'], self.max_prompt_chars)} | {cell(e['reference'])} | {cell(out)} |"
                for e, out in zip(examples, outputs)
            ]
            for logger in loggers if trainer.is_global_zero else []:
                logger.experiment.add_text(f"samples/{task}", "\n".join(table), global_step=trainer.global_step)
        pl_module.model.train(was_training)


def cell(text: str, limit: int = 400) -> str:
    """Text made safe for one markdown table cell."""
    text = text if len(text) <= limit else "..." + text[-limit:]
    return text.replace("|", "\\|").replace("\n", "<br>")
