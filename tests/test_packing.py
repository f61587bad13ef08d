"""Packing (``data.packing``): the examples of a batch share rows, and nothing else changes.

A packed batch must give the loss, the per-example sums and the LoRA gradients of the same examples
unpacked; no example may see another; a packed run trains on the same examples per step (and resumes
the same way, see test_reliability.py); evaluation and generation never pack.
"""

import json

import pytest
import torch
from conftest import ARCHS, run_cli, tiny_fit_args
from safetensors.torch import load_file

from lora_lightning import FlanDataModule, LoRAModule
from lora_lightning.data.tokenization import IGNORE_INDEX, CausalLMCollator, PackingCollator, first_fit_decreasing
from lora_lightning.errors import UserInputError
from lora_lightning.model.building import build_model
from lora_lightning.model.packing import check_packing


def lora_module(folder, attn="sdpa", completion_only_head=True, lora_dropout=0.0, **keys):
    torch.manual_seed(0)
    module = LoRAModule(
        model_name=str(folder), lora_r=4, lora_dropout=lora_dropout, completion_only_head=completion_only_head, **keys
    )
    module.model = build_model(module.settings, None).model  # float32, as under 32-true
    module.model.get_base_model().set_attn_implementation(attn)
    module.model.eval()  # no dropout (GPT-2's): the same computation twice, gradients still flow
    with torch.no_grad():  # B starts at 0; random B gives every LoRA matrix a gradient
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return module


def loss_and_grads(module, batch):
    module.model.zero_grad(set_to_none=True)
    sums, counts = module.completion_loss(batch)
    (sums.sum() / counts.sum()).backward()
    grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
    return sums.detach(), counts, grads


def test_first_fit_decreasing_fills_few_rows():
    lengths = [5, 9, 2, 7, 3, 1, 4]
    rows = first_fit_decreasing(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))  # every example once
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 4  # 31 tokens: at least 4 rows of 10
    assert rows[0] == [1, 5]  # longest first, then the first row with room


def test_packed_batch_layout(examples):
    rows, pad = examples
    batch = PackingCollator(pad, 256)(rows[::2])
    plain = CausalLMCollator(pad)(rows[::2])
    n, length = batch["input_ids"].shape
    assert n < 8 and length <= 256
    assert batch["task"] == plain["task"] and batch["example_id"] == plain["example_id"]  # per example, in order
    assert int(batch["attention_mask"].sum()) == int(plain["attention_mask"].sum())
    # each example's tokens, contiguous, at positions 0..len-1, with its labels (its first one never a target)
    for i, ex in enumerate(rows[::2]):
        where = (batch["segments"] == i).nonzero()
        r, cols = int(where[0, 0]), where[:, 1]
        assert (where[:, 0] == r).all() and (cols == torch.arange(cols[0], cols[0] + len(ex["input_ids"]))).all()
        assert batch["input_ids"][r, cols].tolist() == ex["input_ids"]
        assert batch["position_ids"][r, cols].tolist() == list(range(len(ex["input_ids"])))
        assert batch["labels"][r, cols].tolist() == [IGNORE_INDEX] + ex["labels"][1:]
    pads = batch["segments"] == -1
    assert (batch["attention_mask"][pads] == 0).all() and (batch["labels"][pads] == IGNORE_INDEX).all()
    # the completion tokens, which the loss and the step's token count use, are the same
    assert int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) == int((plain["labels"][:, 1:] != IGNORE_INDEX).sum())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("attn", "head"), [("sdpa", True), ("eager", True), ("sdpa", False)])
def test_packed_loss_and_gradients_equal_unpacked(tiny_models, examples, arch, attn, head):
    rows, pad = examples
    module = lora_module(tiny_models[arch], attn, head)
    packed = PackingCollator(pad, 256)(rows)
    assert packed["input_ids"].shape[0] < len(rows)  # really packed
    ref_sums, ref_counts, ref_grads = loss_and_grads(module, CausalLMCollator(pad)(rows))
    sums, counts, grads = loss_and_grads(module, packed)
    assert counts.tolist() == ref_counts.tolist()
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-5)  # per example, in the batch's order
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_no_example_attends_to_another(tiny_models, examples, arch):
    rows, pad = examples
    module = lora_module(tiny_models[arch])
    collate = PackingCollator(pad, 256)
    batch = collate(rows)
    # an example that shares its row with others, placed first in that row: all the others come after it
    r = next(r for r in range(batch["segments"].shape[0]) if len(set(batch["segments"][r].tolist()) - {-1}) > 1)
    first = int(batch["segments"][r, 0])
    changed = [dict(ex) for ex in rows]
    changed[first]["input_ids"] = [(t * 7 + 3) % 1000 for t in rows[first]["input_ids"]]
    batch2 = collate(changed)
    assert torch.equal(batch2["segments"], batch["segments"])  # same layout, other tokens
    with torch.no_grad():
        sums, _ = module.completion_loss(batch)
        sums2, _ = module.completion_loss(batch2)
    others = [i for i in range(len(rows)) if i != first]
    assert sums2[first] != sums[first]
    torch.testing.assert_close(sums2[others], sums[others], rtol=1e-6, atol=1e-6)


def test_a_model_that_mixes_packed_examples_is_refused(tiny_models, examples, monkeypatch):
    from transformers import masking_utils

    rows, pad = examples
    module = lora_module(tiny_models["gpt2"])
    check_packing(module.model)  # passes as installed
    # transformers no longer reading packed positions: plain causal attention over the whole row
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(UserInputError, match="does not keep packed examples apart.*data.packing=false"):
        module.completion_loss(PackingCollator(pad, 256)(rows))
    module.completion_loss(CausalLMCollator(pad)(rows))  # unpacked batches are not affected


def test_loaders_pack_training_and_validation_only(tiny_models):
    def loaders(packing):
        dm = FlanDataModule(
            tokenizer=str(tiny_models["llama"]),
            cache_dir=None,
            max_length=256,
            packing=packing,
            eval_examples_per_task=3,
        )
        dm.setup("fit")
        return dm, list(dm.train_dataloader()), next(iter(dm.val_dataloader()))

    (dm, train, val), (dm_packed, train_packed, val_packed) = loaders(False), loaders(True)
    assert [b["example_id"] for b in train] == [b["example_id"] for b in train_packed]  # same examples per step
    assert [b["step_tokens"] for b in train] == [b["step_tokens"] for b in train_packed]
    assert sum(b["input_ids"].numel() for b in train_packed) < sum(b["input_ids"].numel() for b in train)
    assert "segments" in val_packed and val_packed["example_id"] == val["example_id"]
    # evaluation (test, standalone validate) and generation get the examples themselves, never packed
    assert list(dm.test_dataloader()) == list(dm_packed.test_dataloader())


def fit(root, model, *extra):
    keys = {
        "model.lora_dropout": 0,
        "model.learning_rate": 0.01,
        "trainer.max_epochs": 1,
        "trainer.precision": "32-true",
        "samples.samples_per_task": 0,
        "data.max_examples_per_task": 8,
        "data.max_val_examples_per_task": 4,
        "data.batch_size": 4,
    }
    done = run_cli(
        *tiny_fit_args(model, root, keys, "--trainer.callbacks+=lora_lightning.callbacks.SampleAudit", *extra)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    audit = [json.loads(line) for line in (root / "sample_audit" / "rank0.jsonl").read_text().splitlines()]
    history = json.loads((root / "adapter_last" / "training_history.json").read_text())
    return audit, history, load_file(root / "adapter_last" / "adapter_model.safetensors")


def test_packed_cli_run_trains_on_the_same_steps(tiny_models, tmp_path):
    audit, history, weights = fit(tmp_path / "plain", tiny_models["gpt_neox"], "--data.packing", "false")
    audit_p, history_p, weights_p = fit(tmp_path / "packed", tiny_models["gpt_neox"], "--data.packing", "true")
    assert [(r["step"], r["ids"]) for r in audit_p] == [(r["step"], r["ids"]) for r in audit]
    assert history_p["global_step"] == history["global_step"] == 6
    for (step, loss), (step_p, loss_p) in zip(history["train_loss"], history_p["train_loss"]):
        assert step == step_p and loss_p == pytest.approx(loss, rel=1e-4)
    for (_, val), (_, val_p) in zip(history["val_loss"], history_p["val_loss"]):
        assert val_p == pytest.approx(val, rel=1e-4)
    assert any(weights[k].abs().max() > 1e-3 for k in weights)  # it trained
    for k in weights:
        torch.testing.assert_close(weights_p[k], weights[k], rtol=1e-3, atol=1e-5)


def test_packed_batch_counts_the_model_flops_of_the_same_work(tiny_models, examples):
    from lora_lightning.model.flops import batch_flops

    rows, pad = examples
    module = lora_module(tiny_models["llama"])
    packed, plain = PackingCollator(pad, 256)(rows), CausalLMCollator(pad)(rows)
    assert batch_flops(module.model, packed) == batch_flops(module.model, plain)  # attention per example
