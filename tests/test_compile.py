"""``model.compile``: decoder blocks compiled for training steps give the eager loss and gradients.

The tests elsewhere run with ``TORCH_COMPILE_DISABLE=1`` (conftest: compiling a tiny model costs more
than it runs); these turn it back on. Compiled and eager steps are compared in float32 with every
dropout at 0, on packed batches of changing shape (compiled once, with dynamic shapes), on GPT-2,
GPT-NeoX and Llama; evaluation and generation stay eager; the CLI's default config compiles.
"""

import pytest
import torch
from conftest import ARCHS, REPO, captured, run_cli, tiny_fit_args
from safetensors.torch import load_file
from test_packing import lora_module, loss_and_grads

from lora_lightning import LoRAModule
from lora_lightning.data.tokenization import PackingCollator
from lora_lightning.model import compiling
from lora_lightning.model.blocks import decoder_blocks
from lora_lightning.model.building import build_model
from lora_lightning.model.compiling import TrainingCompiled, compile_blocks


def two_packed_batches(examples) -> list[dict]:
    """Two packed batches of different shapes (one compiled graph must serve both)."""
    rows, pad = examples
    batches = [PackingCollator(pad, 256)(rows[:8]), PackingCollator(pad, 256)(rows[8:13])]
    assert batches[0]["input_ids"].shape != batches[1]["input_ids"].shape
    return batches


def assert_compiled_step_equals_eager(module, batches, counters, loss_tol=1e-5, grad_tol=(1e-4, 1e-6)) -> None:
    """``batches`` eager, then with the blocks compiled, in training mode with every dropout at 0 (the
    same computation both ways): per-example losses within ``loss_tol``, every gradient within
    ``grad_tol`` (rtol, atol), and dynamo really ran."""
    for m in module.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    module.model.train()
    eager = [loss_and_grads(module, b) for b in batches]
    assert compile_blocks(module.model, "cpu") == 2
    before = captured(counters)
    compiled = [loss_and_grads(module, b) for b in batches]
    assert captured(counters) > before  # dynamo really ran
    for (sums, counts, grads), (csums, ccounts, cgrads) in zip(eager, compiled):
        assert torch.equal(counts, ccounts)
        torch.testing.assert_close(csums, sums, rtol=loss_tol, atol=loss_tol)
        assert grads.keys() == cgrads.keys() and any("lora_A" in n for n in grads)
        for name in grads:
            torch.testing.assert_close(cgrads[name], grads[name], rtol=grad_tol[0], atol=grad_tol[1], msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_compiled_training_step_equals_eager(arch, tiny_models, examples, dynamo_on):
    rows, _ = examples
    batches = two_packed_batches(examples)
    module = lora_module(tiny_models[arch])
    assert_compiled_step_equals_eager(module, batches, dynamo_on)

    module.model.eval()  # evaluation and generation: the eager forward, nothing traced
    after = captured(dynamo_on)
    with torch.no_grad():
        module.completion_loss(batches[0])
        module.model.generate(torch.tensor([rows[0]["input_ids"][:5]]), max_new_tokens=3, do_sample=False)
    assert captured(dynamo_on) == after


def test_compile_blocks_is_idempotent_and_keeps_names(tiny_models):
    module = lora_module(tiny_models["llama"])
    names = list(module.model.state_dict())
    compile_blocks(module.model, "cpu")
    compile_blocks(module.model, "cpu")
    blocks = [m for m in module.model.modules() if isinstance(m.__dict__.get("forward"), TrainingCompiled)]
    assert len(blocks) == 2 and all(not isinstance(b.forward.eager, TrainingCompiled) for b in blocks)
    assert list(module.model.state_dict()) == names  # the adapter exports as before


def test_without_a_cpp_compiler_training_runs_eager(tiny_models, monkeypatch):
    module = lora_module(tiny_models["llama"])
    monkeypatch.setattr(compiling, "has_cpp_compiler", lambda: False)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found"):
        assert compile_blocks(module.model, "cpu") == 0
    assert not any(isinstance(m.__dict__.get("forward"), TrainingCompiled) for m in module.model.modules())


def test_default_config_compiles_the_fit(tiny_models, tmp_path, monkeypatch):
    """``lora-lightning fit --config configs/default.yaml`` as a user runs it, compiling on."""
    monkeypatch.delenv("TORCH_COMPILE_DISABLE")
    done = run_cli(
        "fit",
        "--config",
        str(REPO / "configs" / "default.yaml"),
        *("--model.model_name", str(tiny_models["llama"]), "--trainer.default_root_dir", str(tmp_path)),
        *("--trainer.max_epochs", "1", "--trainer.precision", "32-true", "--data.batch_size", "4"),
        *("--data.max_examples_per_task", "8", "--data.max_val_examples_per_task", "4"),
        *("--data.cache_dir", str(tmp_path / "cache")),
        fresh=True,  # dynamo reads TORCH_COMPILE_DISABLE at import
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model.compile: 2 decoder blocks compiled for training steps" in done.stdout + done.stderr
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")  # validated eager, then exported
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # the compiled steps trained it


def test_blocks_found_after_fsdp2_renames_their_class(tiny_models):
    """FSDP2's fully_shard swaps a block's class for an ``FSDP<name>`` subclass; compiling after sharding
    (configs/fsdp.yaml with model.compile) must still find the blocks."""
    module = lora_module(tiny_models["llama"])
    for block in decoder_blocks(module.model, "-"):
        cls = type(block)
        block.__class__ = type(f"FSDP{cls.__name__}", (cls,), {})
    assert [type(b).__name__ for b in decoder_blocks(module.model, "-")] == ["FSDPLlamaDecoderLayer"] * 2
    assert compile_blocks(module.model, "cpu") == 2


def test_one_graph_traced_once_serves_every_block_under_lora(tiny_models, examples, dynamo_on):
    """Old code traced two graphs (the first block's input, the frozen embedding's output, needs no
    gradient; dynamo guards on it) and restarted its analysis once over float constants: about twice
    the first step's compile. Then the first block ran eager (torch's dropout, eager activations);
    now it gets its input as a leaf that requires gradients and runs the one graph, and floats are
    specialized."""
    from torch._dynamo.utils import compilation_time_metrics

    rows, pad = examples
    module = lora_module(tiny_models["llama"])
    module.model.train()
    blocks = decoder_blocks(module.model, "")
    hidden_needs_grad = []
    blocks[0].register_forward_pre_hook(
        lambda m, args, kw: hidden_needs_grad.append(
            args[0].requires_grad if args else kw["hidden_states"].requires_grad
        ),
        with_kwargs=True,
    )
    compilation_time_metrics.clear()
    compile_blocks(module.model, "cpu")
    first = blocks[0].forward
    compiled_calls = []
    first.compiled = lambda *a, _run=first.compiled, **kw: compiled_calls.append(1) or _run(*a, **kw)
    graphs = dynamo_on["stats"]["unique_graphs"]  # the counters outlive dynamo's reset: count from here
    for batch in (PackingCollator(pad, 256)(rows[:8]), PackingCollator(pad, 256)(rows[8:13])):
        loss_and_grads(module, batch)
    assert hidden_needs_grad and not any(hidden_needs_grad)  # the case that made a second graph
    assert len(compiled_calls) == 2  # the first block ran compiled at both steps
    assert dynamo_on["stats"]["unique_graphs"] - graphs == 1
    assert "compile_attempt_0" in compilation_time_metrics and "compile_attempt_1" not in compilation_time_metrics


def saved_activation_bytes(module, batch) -> int:
    """Bytes autograd keeps for backward over one training forward (each storage once, weights not
    counted), then the backward that frees them."""
    weights = {p.untyped_storage().data_ptr() for p in module.model.parameters()}
    saved: dict[int, int] = {}

    def keep(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    module.model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        sums, counts = module.completion_loss(batch)
    (sums.sum() / counts.sum()).backward()
    return sum(saved.values())


def test_a_memory_budget_keeps_fewer_activations_for_the_same_gradients(tiny_models, examples, dynamo_on, monkeypatch):
    """The partition compiled blocks use keeps less for backward than inductor's default (grouped-query
    keys and values recomputed per head, not saved), model.compile_memory_budget below 1 less again,
    and the step's gradients stay the same."""
    batch = two_packed_batches(examples)[0]
    saved, grads = {}, {}

    def compiled_step(name: str, budget: float) -> None:
        torch._dynamo.reset()  # a graph per setting: dynamo would serve the next from the first's cache
        module = lora_module(tiny_models["llama"], target_modules="all-linear")
        module.model.train()
        assert compile_blocks(module.model, "cpu", memory_budget=budget) == 2
        saved[name] = saved_activation_bytes(module, batch)
        grads[name] = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}

    with monkeypatch.context() as patched:
        patched.setattr(compiling, "PARTITIONER_OPTIONS", {})  # inductor's own partition
        compiled_step("inductor", 1.0)
    compiled_step("ours", 1.0)
    compiled_step("budget 0.2", 0.2)
    assert saved["ours"] < saved["inductor"] and saved["budget 0.2"] < 0.85 * saved["ours"], saved
    for name in ("ours", "budget 0.2"):
        assert grads[name].keys() == grads["inductor"].keys()
        for key, grad in grads["inductor"].items():
            torch.testing.assert_close(grads[name][key], grad, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")


def test_lora_dropout_keeps_nothing_more_for_backward(tiny_models, examples, dynamo_on):
    """Compiled CPU blocks recompute each adapter's dropped-out input in backward from one seed
    (model.counter_dropout): all-linear LoRA with dropout keeps what it keeps without (the seeds
    aside). Old code kept a dropped-out copy of the input per adapter: q, k, v, o, gate, up and down."""
    batch = two_packed_batches(examples)[0]
    saved = {}
    for p in (0.0, 0.1):
        torch._dynamo.reset()
        module = lora_module(tiny_models["llama"], target_modules="all-linear", lora_dropout=p)
        module.model.train()
        compile_blocks(module.model, "cpu")
        saved[p] = saved_activation_bytes(module, batch)
    assert saved[0.1] <= saved[0.0] + 1024, saved


def test_a_memory_budget_outside_zero_to_one_is_one_line(tiny_models):
    from lora_lightning.errors import UserInputError

    for budget in (0.0, 1.5, -1.0):
        with pytest.raises(UserInputError, match=r"model.compile_memory_budget must be in \(0, 1\]"):
            LoRAModule(model_name=str(tiny_models["llama"]), compile_memory_budget=budget)


def test_compiled_step_with_eager_attention_equals_eager(tiny_models, examples, dynamo_on):
    """``model.attn_implementation eager``: transformers' plain attention (matmuls, mask, softmax) inside
    the compiled blocks, fused by inductor, gives the eager step's losses and gradients over packed rows."""
    module = lora_module(tiny_models["llama"], attn="eager")
    assert_compiled_step_equals_eager(module, two_packed_batches(examples), dynamo_on)


@pytest.mark.parametrize("attn", ["eager", None])
def test_attn_implementation_is_the_models(tiny_models, attn):
    module = LoRAModule(model_name=str(tiny_models["llama"]), attn_implementation=attn)
    model = build_model(module.settings, None).model
    assert model.get_base_model().config._attn_implementation == (attn or "sdpa")  # null: transformers' default


@pytest.mark.parametrize(
    ("attn", "named"),
    [
        ("no_such_kernel", "no_such_kernel"),  # transformers' own refusal, in one line
        ("flash_attention_2", "FlashAttention2"),  # a kernel package not installed (an ImportError)
        ("flex_attention", "flex_attention cannot train on cpu"),  # torch 2.13 has no CPU backward for it
    ],
)
def test_an_attn_implementation_that_cannot_train_here_is_one_line(tiny_models, tmp_path, attn, named):
    keys = {"model.attn_implementation": attn, "model.compile": False}
    out = run_cli(*tiny_fit_args(tiny_models["llama"], tmp_path / "run", keys))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("lora-lightning: ")]
    assert len(lines) == 1 and named in lines[0], out.stderr[-2000:]
    assert not (tmp_path / "run" / "adapter").exists()
