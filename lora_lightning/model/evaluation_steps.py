"""The module's ``test`` and ``predict`` steps: evaluation examples scored, prompts completed.

``test_step`` returns its records (``{"scored": {mode: records}}``); the ``EvaluationReport``
callback collects them in ``on_test_batch_end`` and turns them into the results table.
"""

from __future__ import annotations

import contextlib

from lora_lightning.data.eval_examples import EvalExample
from lora_lightning.model.generation import generate, prompt_budget
from lora_lightning.model.residual_base import scoring_base
from lora_lightning.model.scoring import score_examples


class EvaluationSteps:
    """LightningModule steps for ``test`` (and standalone ``validate``) and ``predict``."""

    def eval_modes(self) -> list[str]:
        """``base`` and ``adapter`` when a trained adapter is loaded (so the table shows what it
        bought; ``adapter`` alone without ``score_base``), else ``model`` alone."""
        if not self.hparams.adapter:
            return ["model"]
        return ["base", "adapter"] if self.hparams.score_base else ["adapter"]

    def test_step(self, batch: list[EvalExample], batch_idx: int) -> dict[str, dict[str, list[dict]]]:
        """Scores a batch of one task's evaluation examples with each mode (base and adapter share
        the prompt format, so the comparison is fair) and returns ``{"scored": {mode: records}}``.
        ``base`` is the base model itself, also under a PiSSA/OLoRA adapter, whose disabled adapter
        alone would leave the residual (model.residual_base)."""
        scored = {}
        for mode in self.eval_modes():
            with scoring_base(self.model, self.rewritten_base) if mode == "base" else contextlib.nullcontext():
                scored[mode] = score_examples(
                    self.model, self.tokenizer, batch, self.data.max_length, self.prompt_format
                )
        return {"scored": scored}

    def predict_step(self, batch: dict[str, list], batch_idx: int) -> list[dict]:
        """Completions for a batch of prompt rows; each row comes back with ``completion`` added.
        A long prompt is shortened to leave ``max_new_tokens`` within ``max_length`` and the model's context."""
        hp, prompts = self.hparams, batch["prompt"]
        sampling = (hp.max_new_tokens, hp.temperature, hp.top_p, len(prompts), self.prompt_format)
        budget = prompt_budget(self.data.max_length, hp.max_new_tokens)
        texts = generate(self.model, self.tokenizer, prompts, *sampling, max_prompt_tokens=budget)
        return [{**row, "completion": text} for row, text in zip(batch["rows"], texts)]
