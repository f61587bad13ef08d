"""The LightningModule: a causal LM wrapped with peft LoRA (or fully fine-tuned), and its training.

The Trainer does devices, precision, accumulation and clipping; this module owns the model, the loss
(per-token over the whole optimizer step: :mod:`.step_loss`), the optimizer and what it logs.
``test`` scores examples here; the ``EvaluationReport`` callback turns the scores into the table.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn

from lora_lightning.errors import UserInputError
from lora_lightning.loading import DEFAULT_BASE_CACHE, EMBEDDED_MODEL
from lora_lightning.model.building import adapters_to_float32, build_model
from lora_lightning.model.checkpointing import TrainableCheckpointing
from lora_lightning.model.compiling import compile_blocks
from lora_lightning.model.generation import generate, prompt_budget
from lora_lightning.model.lora import check_lora_settings
from lora_lightning.model.loss import sequence_losses
from lora_lightning.model.neftune import check_neftune_alpha
from lora_lightning.model.optim import build_optimizer, check_loraplus_ratio, warmup_then_decay
from lora_lightning.model.packing import check_packing
from lora_lightning.model.quantization import check_quantization
from lora_lightning.model.residual_base import scoring_base
from lora_lightning.model.scoring import score_examples
from lora_lightning.model.sharding import shard_model
from lora_lightning.model.step_loss import StepLoss
from lora_lightning.prompts import resolve_prompt_format


class LoRAModule(TrainableCheckpointing, LightningModule):
    """LoRA (or full) fine-tuning of a causal language model on prompt/completion batches.

    Args:
        model_name: Base model: a Hub id (``openai-community/gpt2-medium``), a local Transformers
            folder, a ``.gguf`` file, or ``smollm2-135m-instruct`` (embedded, offline). null with
            ``adapter`` set: the base that adapter names.
        adapter: A trained adapter folder to start from (for ``predict``, ``test`` or more
            training) instead of a fresh LoRA; its LoRA settings replace the ``lora_*`` keys.
        lora: Train a LoRA adapter (True) or fine-tune every weight (False, the guide's non-LoRA mode).
        lora_r: LoRA rank (the guide's ``--lora_r``).
        lora_alpha: LoRA scaling numerator; the update is scaled by alpha / r (or alpha / sqrt(r) with rsLoRA).
        lora_dropout: Dropout on the LoRA input, in [0, 1).
        lora_bias: Which biases train: ``none``, ``all`` or ``lora_only``.
        target_modules: ``auto`` (attention projections per architecture: gpt2 c_attn and attn.c_proj;
            gpt_neox query_key_value; llama q_proj, v_proj), ``all-linear``, or a list of module names.
        use_rslora: Rank-stabilised LoRA scaling (alpha / sqrt(r)).
        use_dora: Weight-decomposed LoRA (DoRA).
        init_lora_weights: How peft initialises the adapter: ``default`` (kaiming-uniform A, zero B),
            ``gaussian`` (normal A with std 1/r, zero B), ``pissa`` (A, B from the top-r singular vectors
            of each weight) or ``olora`` (from its QR decomposition; not GPT-2). pissa and olora subtract the
            initial adapter from the base weights, so the model starts unchanged but its base is the
            residual: the exported adapter fits only that residual, which peft rebuilds when it loads the
            adapter onto the original base; it cannot share a base with other adapters.
        optimizer: The optimizer class (a LightningCLI callable, e.g. ``torch.optim.SGD``; other
            arguments as ``--model.optimizer.momentum 0.9``). Its learning rate and weight decay
            come from ``learning_rate`` and ``weight_decay``.
        lr_scheduler: A scheduler class taking the optimizer; null: warmup then ``lr_schedule`` decay, per step.
        learning_rate: Peak learning rate, reached after warmup.
        weight_decay: Weight decay for matrices (biases and norms get none).
        warmup_ratio: Share of the optimizer steps spent warming the learning rate up from 0.
        lr_schedule: Decay after warmup: ``linear`` or ``cosine``, down to 0 at the last step.
        loraplus_lr_ratio: LoRA+: lora_B (and any trained 1-D weight) learns at this ratio x
            ``learning_rate``, lora_A at ``learning_rate`` (peft's ``create_loraplus_optimizer``, with the
            ``optimizer`` class); null: one learning rate. The paper suggests 16.
        neftune_noise_alpha: NEFTune: uniform noise of scale alpha / sqrt(length x hidden size) on the
            input embeddings, in training steps only (validation, test, predict and generation see
            none); null: off. The paper uses 5 to 15.
        gradient_checkpointing: Recompute activations in backward (non-reentrant) to save memory.
        compile: ``torch.compile`` each decoder block for training steps (``fit`` only; evaluation and
            generation run eager): much less activation memory and the same speed, after under a
            minute of compiling at the first step. On in ``configs/default.yaml``.
        completion_only_head: Apply the LM head only at completion positions (same loss, much less work).
        quantization: QLoRA: the frozen base's linear layers in ``nf4`` (4-bit NormalFloat, with double
            quantization: QLoRA's recipe), ``fp4`` or ``int8`` (bitsandbytes: the ``[qlora]`` extra),
            computing in the Trainer's precision; null: not quantized. The adapter still trains and
            exports in float32 and loads on the full-precision base. ``configs/qlora.yaml`` sets nf4.
        base_dtype: dtype of the frozen base weights with LoRA; ``auto``: bfloat16 under ``bf16-mixed``/``bf16-true``,
            float16 under ``16-mixed``, else float32. The adapter and its optimizer state stay float32,
            under ``bf16-true`` too (where a bias ``lora_bias`` opens trains in bfloat16, as its layer computes).
        trust_remote_code: Allow model code from the model's repository to run. Off unless you trust it.
        base_cache_dir: Where GGUF models are cached as safetensors after their first conversion.
        nonfinite: What a non-finite loss or gradient does: ``stop`` the run with a message naming
            the step (the last good checkpoint stays as it was), or ``skip`` that update.
        prompt_format: ``auto``, ``plain`` or ``chat``; the CLI links it to ``data.prompt_format``.
        max_length: Longest prompt + completion in evaluation; the CLI links it to ``data.max_length``.
        score_base: ``test``/``validate`` with ``adapter``: score the base model too (the table's
            ``base`` column and ``delta``); false scores the adapter alone, in half the time.
        max_new_tokens: ``predict``: most tokens generated per prompt.
        temperature: ``predict``: 0 for greedy decoding, above 0 to sample.
        top_p: ``predict``: nucleus sampling mass when sampling.
    """

    def __init__(
        self,
        model_name: str | None = EMBEDDED_MODEL,
        adapter: str | None = None,
        lora: bool = True,
        lora_r: int = 16,
        lora_alpha: float = 32.0,
        lora_dropout: float = 0.1,
        lora_bias: Literal["none", "all", "lora_only"] = "none",
        target_modules: list[str] | str = "auto",
        use_rslora: bool = False,
        use_dora: bool = False,
        init_lora_weights: Literal["default", "gaussian", "pissa", "olora"] = "default",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.06,
        lr_schedule: Literal["linear", "cosine"] = "linear",
        loraplus_lr_ratio: float | None = None,
        neftune_noise_alpha: float | None = None,
        gradient_checkpointing: bool = False,
        compile: bool = False,
        completion_only_head: bool = True,
        quantization: Literal["nf4", "fp4", "int8"] | None = None,
        base_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        trust_remote_code: bool = False,
        base_cache_dir: str = DEFAULT_BASE_CACHE,
        nonfinite: Literal["stop", "skip"] = "stop",
        prompt_format: Literal["auto", "plain", "chat"] = "auto",
        max_length: int = 512,
        score_base: bool = True,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ):
        super().__init__()
        if adapter is not None and not Path(adapter, "adapter_config.json").is_file():
            raise UserInputError(f"model.adapter {adapter!r} is not an adapter folder (no adapter_config.json)")
        if lora:
            check_lora_settings(lora_r, lora_alpha, lora_dropout, lora_bias, init_lora_weights)
        check_loraplus_ratio(loraplus_lr_ratio, lora or adapter is not None)
        check_quantization(quantization, lora or adapter is not None, compile)
        check_neftune_alpha(neftune_noise_alpha)
        if learning_rate <= 0 or not 0.0 <= warmup_ratio < 1.0:
            raise UserInputError(
                f"need model.learning_rate > 0, warmup_ratio in [0,1): {learning_rate}, {warmup_ratio}"
            )
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer_class, self.lr_scheduler_class = optimizer, lr_scheduler
        self.model: Any = None
        self.tokenizer: Any = None
        self.base_model_path: str | None = None
        self.prompt_format: str | None = None  # plain or chat, resolved with the tokenizer
        self.step_loss = StepLoss(self)
        self.scored: dict[str, list[dict]] = {}  # evaluation records per mode, for EvaluationReport
        self.packing_checked = False  # the model keeps packed examples apart (model.packing.check_packing)

    # -- model -------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Loads the base and adds LoRA; called by the Trainer (once) before fit/validate/test.
        Under :class:`~lora_lightning.model.sharding.FSDP2Strategy`, ``fit`` then shards it."""
        if self.model is not None:
            return
        device = self.trainer.strategy.root_device
        sharded = self.device_mesh is not None
        self.model, self.tokenizer, self.base_model_path = build_model(
            self.hparams, self.trainer.precision, device, sharded
        )
        self.prompt_format = resolve_prompt_format(self.hparams.prompt_format, self.tokenizer, self.hparams.adapter)
        if sharded and self.trainer.state.fn == TrainerFn.FITTING:
            shard_model(self.model, self.device_mesh["data_parallel"])  # FSDP2 (configs/fsdp.yaml): model.sharding
        if self.hparams.compile and self.trainer.state.fn == TrainerFn.FITTING:
            compile_blocks(self.model, self.trainer.strategy.root_device.type)  # training steps: model.compiling

    def to(self, *args: Any, **kwargs: Any) -> LoRAModule:
        """``nn.Module.to``, after which the LoRA weights are float32 again: ``bf16-true``/``16-true``
        convert the whole module with ``.to(dtype)`` before the optimizer is made (and before DDP
        wraps it), so the adapter, its gradients, AdamW state and export stay float32 over the
        half-precision base (:func:`~lora_lightning.model.building.adapters_to_float32`)."""
        super().to(*args, **kwargs)
        if self.model is not None and self.is_lora:
            adapters_to_float32(self.model)
        return self

    @property
    def is_lora(self) -> bool:
        return bool(self.hparams.lora or self.hparams.adapter)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def completion_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example of a batch: the summed completion-token cross-entropy, and its completion token count.

        A packed batch (``position_ids``, ``segments``) goes to the model without its 2D mask, so that
        transformers confines attention to each example; the first one checks that the model does.
        """
        ids, mask, labels, positions = batch["input_ids"], batch["attention_mask"], batch["labels"], None
        if "position_ids" in batch:
            if not self.packing_checked:
                check_packing(self.model)
                self.packing_checked = True
            mask, positions = None, batch["position_ids"]
        head = self.hparams.completion_only_head
        return sequence_losses(self.model, ids, mask, labels, head, positions, batch.get("segments"))

    # -- fit ---------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        sums, counts = self.completion_loss(batch)
        loss = self.step_loss.scaled(sums.sum(), int(counts.sum()), batch, batch_idx)
        return {"loss": loss, "task_losses": per_task(batch, sums, counts)}

    def on_train_epoch_start(self) -> None:
        self.step_loss.start_epoch()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.step_loss.check_gradients(optimizer)

    def validation_step(self, batch: dict[str, Any] | list[dict], batch_idx: int) -> dict[str, Any] | None:
        if isinstance(batch, list):  # standalone `validate`: evaluation examples, scored like `test`
            return self.test_step(batch, batch_idx)
        sums, counts = self.completion_loss(batch)
        self.step_loss.add_validation(sums.sum(), int(counts.sum()))
        return {"task_losses": per_task(batch, sums, counts)}

    def on_validation_epoch_end(self) -> None:
        if self.trainer.state.fn != "validate":
            self.step_loss.log_validation()

    # -- evaluation (test, standalone validate) and predict -----------------------------------

    def eval_modes(self) -> list[str]:
        """``base`` and ``adapter`` when a trained adapter is loaded (so the table shows what it
        bought; ``adapter`` alone without ``score_base``), else ``model`` alone."""
        if not self.hparams.adapter:
            return ["model"]
        return ["base", "adapter"] if self.hparams.score_base else ["adapter"]

    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        """Scores a batch of one task's evaluation examples with each mode (base and adapter share
        the prompt format, so the comparison is fair). ``base`` is the base model itself, also under a
        PiSSA/OLoRA adapter, whose disabled adapter alone would leave the residual (model.residual_base)."""
        for mode in self.eval_modes():
            with scoring_base(self.model) if mode == "base" else contextlib.nullcontext():
                rows = score_examples(self.model, self.tokenizer, batch, self.hparams.max_length, self.prompt_format)
            self.scored.setdefault(mode, []).extend(rows)

    def predict_step(self, batch: dict[str, list], batch_idx: int) -> list[dict]:
        """Completions for a batch of prompt rows; each row comes back with ``completion`` added.
        A long prompt is shortened to leave ``max_new_tokens`` within ``max_length`` and the model's context."""
        hp, prompts = self.hparams, batch["prompt"]
        sampling = (hp.max_new_tokens, hp.temperature, hp.top_p, len(prompts), self.prompt_format)
        budget = prompt_budget(hp.max_length, hp.max_new_tokens)
        texts = generate(self.model, self.tokenizer, prompts, *sampling, max_prompt_tokens=budget)
        return [{**row, "completion": text} for row, text in zip(batch["rows"], texts)]

    # -- optimizer ---------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        lr, decay, ratio = hp.learning_rate, hp.weight_decay, hp.loraplus_lr_ratio
        optimizer = build_optimizer(self.model, self.optimizer_class, lr, decay, ratio)
        if self.lr_scheduler_class is not None:
            scheduler = self.lr_scheduler_class(optimizer)
        else:
            steps = int(self.trainer.estimated_stepping_batches)
            scheduler = warmup_then_decay(optimizer, hp.lr_schedule, steps, hp.warmup_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def per_task(batch: dict[str, Any], sums: torch.Tensor, counts: torch.Tensor) -> dict[str, list[float]]:
    """``{task: [loss sum, completion tokens, examples]}`` of a batch, for the per-task curves
    (:class:`~lora_lightning.callbacks.TaskCurves`); empty when the batch does not name its tasks."""
    out: dict[str, list[float]] = {}
    for task, loss_sum, count in zip(batch.get("task") or [], sums.detach().tolist(), counts.tolist()):
        entry = out.setdefault(task, [0.0, 0, 0])
        entry[0] += loss_sum
        entry[1] += count
        entry[2] += 1
    return out
