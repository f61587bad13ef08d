"""The LightningModule: a causal LM wrapped with peft LoRA (or fully fine-tuned), and its training.

The Trainer does devices, precision, accumulation and clipping; this module owns the model, the loss
(per-token over the whole optimizer step: :mod:`.step_loss`), the optimizer, the loss history and
what it logs. It takes its tokenizer, prompt format and length from the datamodule it trains with
(:meth:`LoRAModule.connect`). ``test_step`` returns its scored examples; the ``EvaluationReport``
callback collects them into the table.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn

from lora_lightning.data.eval_examples import EvalExample
from lora_lightning.data.handoff import DataHandoff
from lora_lightning.data.tokenization import Batch
from lora_lightning.loading import DEFAULT_BASE_CACHE, EMBEDDED_MODEL
from lora_lightning.model.attention import check_attention_trains
from lora_lightning.model.building import adapters_to_float32, build_model
from lora_lightning.model.checkpointing import TrainableCheckpointing
from lora_lightning.model.compiling import compile_blocks
from lora_lightning.model.connection import DataConnection
from lora_lightning.model.evaluation_steps import EvaluationSteps
from lora_lightning.model.flops import batch_flops
from lora_lightning.model.loss import sequence_losses
from lora_lightning.model.optim import build_optimizer, warmup_then_decay
from lora_lightning.model.packing import check_packing
from lora_lightning.model.settings import ModelSettings
from lora_lightning.model.sharding import shard_model
from lora_lightning.model.step_loss import StepLoss, per_task


class LoRAModule(DataConnection, EvaluationSteps, TrainableCheckpointing, LightningModule):
    """LoRA (or full) fine-tuning of a causal language model on prompt/completion batches.

    Args:
        model_name: Base model: a Hub id (``openai-community/gpt2-medium``), a local Transformers
            folder, a ``.gguf`` file, or ``smollm2-135m-instruct`` (embedded, offline). null with
            ``adapter`` set: the base that adapter names.
        adapter: A trained adapter folder to start from (``predict``, ``test``, more training); its
            settings replace the ``lora_*`` keys.
        lora: Train a LoRA adapter (True) or fine-tune every weight (False, the guide's non-LoRA mode).
        lora_r: LoRA rank (the guide's ``--lora_r``).
        lora_alpha: LoRA scaling numerator; the update is scaled by alpha / r (or alpha / sqrt(r) with rsLoRA).
        lora_dropout: Dropout on the LoRA input, in [0, 1).
        lora_bias: Which biases train: ``none``, ``all`` or ``lora_only``.
        target_modules: ``auto`` (attention projections per architecture: gpt2 c_attn and attn.c_proj;
            gpt_neox query_key_value; llama q_proj, v_proj), ``all-linear``, or a list of module names.
        use_rslora: Rank-stabilised LoRA scaling (alpha / sqrt(r)).
        use_dora: Weight-decomposed LoRA (DoRA).
        peft_config: Any other peft method instead of LoRA: ``{class_path: peft.IA3Config, init_args:
            {...}}`` (IA3, LoHa, LoKr, a class of your own; :mod:`~lora_lightning.model.peft_method`).
        init_lora_weights: ``default`` (kaiming-uniform A, zero B), ``gaussian``, ``pissa`` (top-r singular
            vectors) or ``olora`` (QR; not GPT-2); pissa and olora train on the residual base (model.lora).
        optimizer: The optimizer class (e.g. ``torch.optim.SGD``, more arguments as
            ``--model.optimizer.momentum 0.9``); learning rate and weight decay from the keys below.
        lr_scheduler: A scheduler class taking the optimizer; null: warmup then ``lr_schedule`` decay, per step.
        learning_rate: Peak learning rate, reached after warmup.
        weight_decay: Weight decay for matrices (biases and norms get none).
        warmup_ratio: Share of the optimizer steps spent warming the learning rate up from 0.
        lr_schedule: Decay after warmup: ``linear`` or ``cosine``, down to 0 at the last step.
        loraplus_lr_ratio: LoRA+: lora_B learns at this ratio x ``learning_rate`` (peft's
            ``create_loraplus_optimizer``); null: one learning rate. The paper suggests 16.
        neftune_noise_alpha: NEFTune: noise of scale alpha / sqrt(length x hidden) on the input
            embeddings, training steps only; null: off. The paper uses 5 to 15.
        gradient_checkpointing: Recompute activations in backward (non-reentrant) to save memory.
        compile: ``torch.compile`` each decoder block for ``fit``'s training steps: much less activation
            memory, after under a minute of compiling. On in ``configs/default.yaml``.
        compile_memory_budget: With ``compile``: the share of each compiled block's activations kept
            for backward, in (0, 1]; below 1 the rest is recomputed in backward, the cheapest first
            (torch's ``activation_memory_budget``): less peak memory for fewer tokens/s
            (docs/performance.md). 1 keeps what is fastest.
        completion_only_head: Apply the LM head only at completion positions (same loss, much less work).
        quantization: QLoRA: the frozen base's linear layers in ``nf4`` (with double quantization),
            ``fp4`` or ``int8`` (the ``[qlora]`` extra); the adapter stays float32. ``configs/qlora.yaml``.
        base_dtype: dtype of the frozen base with an adapter; ``auto``: bfloat16 under ``bf16-*``,
            float16 under ``16-*``, else float32. The adapter and its optimizer state stay float32.
        trust_remote_code: Allow model code from the model's repository to run. Off unless you trust it.
        attn_implementation: The attention kernel transformers runs: ``sdpa`` (its default),
            ``eager`` (plain matmuls and softmax, which compiled blocks fuse: faster on CPU, and with
            ``compile_memory_budget`` 0.8 about as little memory; configs/default.yaml sets both;
            docs/performance.md), or on GPUs
            ``flash_attention_2`` / ``flex_attention``, which skip the other examples of a packed row.
            null: the model's default. Packed rows are checked to stay apart whatever the kernel.
        base_cache_dir: Where GGUF models are cached as safetensors after their first conversion.
        nonfinite: What a non-finite loss or gradient does: ``stop`` the run with a message naming
            the step (the last good checkpoint stays as it was), or ``skip`` that update.
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
        peft_config: dict[str, Any] | None = None,
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
        compile_memory_budget: float = 1.0,
        completion_only_head: bool = True,
        quantization: Literal["nf4", "fp4", "int8"] | None = None,
        base_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        base_cache_dir: str = DEFAULT_BASE_CACHE,
        nonfinite: Literal["stop", "skip"] = "stop",
        score_base: bool = True,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.settings = ModelSettings.from_hparams(self.hparams)  # every key checked, before anything loads
        self.optimizer_class, self.lr_scheduler_class = optimizer, lr_scheduler
        self.model: Any = None
        self.data: DataHandoff | None = None  # from the datamodule: connect()
        self.base_model_path: str | None = None
        self.rewritten_base: Any = None  # base weights an adapter's PiSSA/OLoRA init rewrote (model.residual_base)
        self.token_losses: Any = None  # a sharded model's own token-loss function (model.sharding)
        self.history: dict[str, list] = {"train_loss": [], "val_loss": []}
        self.step_loss = StepLoss(self)
        self.packing_checked = False  # the model keeps packed examples apart (model.packing.check_packing)
        self.flops_per_batch = 0.0  # of the last batch, read by Lightning's ThroughputMonitor (callbacks.throughput)

    def configure_model(self) -> None:
        """Loads the base and adds LoRA; called by the Trainer (once) before fit/validate/test.
        Under :class:`~lora_lightning.model.sharding.FSDP2Strategy`, ``fit`` then shards it."""
        if self.model is not None:
            return
        self.connect_data()  # setup() has, unless configure_model is called alone
        device, sharded = self.trainer.strategy.root_device, self.device_mesh is not None
        if self.settings.attn_implementation and self.trainer.state.fn == TrainerFn.FITTING:
            check_attention_trains(self.settings.attn_implementation, device)  # before the base loads
        built = build_model(self.settings, self.tokenizer.pad_token_id, self.trainer.precision, device, sharded)
        self.model, self.base_model_path, self.rewritten_base = built.model, built.base_path, built.rewritten
        if sharded and self.trainer.state.fn == TrainerFn.FITTING:
            self.token_losses = shard_model(self.model, self.device_mesh["data_parallel"])  # FSDP2: model.sharding
        if self.hparams.compile and self.trainer.state.fn == TrainerFn.FITTING:
            device_type = self.trainer.strategy.root_device.type
            compile_blocks(self.model, device_type, self.hparams.compile_memory_budget)  # model.compiling

    def to(self, *args: Any, **kwargs: Any) -> LoRAModule:
        """``nn.Module.to``, then the adapter back in float32: ``bf16-true``/``16-true`` cast the whole module
        before the optimizer is made (:func:`~lora_lightning.model.building.adapters_to_float32`)."""
        super().to(*args, **kwargs)
        if self.model is not None and self.is_lora:
            adapters_to_float32(self.model)
        return self

    @property
    def is_lora(self) -> bool:  # an adapter trains (LoRA or another peft method); False: every weight does
        return self.settings.trains_adapter

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def completion_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
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
        self.flops_per_batch = batch_flops(self.model, batch, head, backward=self.training)  # ThroughputMonitor's
        return sequence_losses(self.model, ids, mask, labels, head, positions, batch.get("segments"), self.token_losses)

    # -- fit ---------------------------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        sums, counts = self.completion_loss(batch)
        loss, step_mean = self.step_loss.scaled(sums.sum(), int(counts.sum()), batch, batch_idx)
        if step_mean is not None:
            self.history["train_loss"].append([self.global_step + 1, step_mean])
        return {"loss": loss, "task_losses": per_task(batch, sums, counts)}

    def on_train_epoch_start(self) -> None:
        self.step_loss.start_epoch()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.step_loss.check_gradients(optimizer)

    def validation_step(self, batch: Batch | list[EvalExample], batch_idx: int) -> dict[str, Any]:
        if isinstance(batch, list):  # standalone `validate`: evaluation examples, scored like `test`
            return self.test_step(batch, batch_idx)
        sums, counts = self.completion_loss(batch)
        self.step_loss.add_validation(sums.sum(), int(counts.sum()))
        return {"task_losses": per_task(batch, sums, counts)}

    def on_validation_epoch_end(self) -> None:
        if self.trainer.state.fn != "validate":
            self.history["val_loss"].append([self.global_step, self.step_loss.log_validation()])

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
