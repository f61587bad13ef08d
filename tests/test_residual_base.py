"""The results table's "base" column is the base model itself, also under PiSSA/OLoRA adapters.

peft loads a PiSSA/OLoRA adapter by rewriting each adapted base weight to the residual
``W - scale * B0 A0``; with the adapter disabled that residual alone is left, which is not the base
model. ``test`` must score the base as a fresh load of it gives it, and the adapter as plain peft
loads it (the base put back must not leak into the adapter's scores).
"""

from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel

from lora_lightning import FlanDataModule
from lora_lightning.loading import load_causal_lm
from lora_lightning.model.lora import apply_lora
from lora_lightning.model.module import LoRAModule


def trained_adapter(base: str, tokenizer, folder, init: str) -> str:
    """An adapter of ``init`` moved away from its initial weights (as training would), saved."""
    torch.manual_seed(0)
    model = apply_lora(load_causal_lm(base), r=4, dropout=0.0, init_lora_weights=init)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p), alpha=0.05)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def scored(module: LoRAModule, batches: list[list[dict]]) -> dict[str, list[dict]]:
    """What ``test`` scores per mode, on a module configured as the Trainer would (float32)."""
    module.trainer = SimpleNamespace(
        precision="32-true", estimated_stepping_batches=1, strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    module.configure_model()
    module.model.eval()
    out: dict[str, list[dict]] = {}
    for i, batch in enumerate(batches):
        for mode, rows in module.test_step(batch, i)["scored"].items():
            out.setdefault(mode, []).extend(rows)
    return out


def scores(rows: list[dict]) -> list[tuple]:
    return [(r["eval_id"], round(r["loss_sum"], 4), r["tokens"], r["prediction"], r["ranked"]) for r in rows]


@pytest.fixture(scope="module")
def batches(tiny_models):
    dm = FlanDataModule(tasks=["bool_q", "common_gen"], tokenizer=str(tiny_models["llama"]), cache_dir=None)
    return [part[:2] for part in dm.eval_examples(limit=2).values()]


@pytest.mark.parametrize(
    "arch, init", [("llama", "default"), ("llama", "pissa"), ("llama", "olora"), ("gpt2", "pissa")]
)
def test_base_column_is_the_freshly_loaded_base_and_adapter_column_plain_peft(
    tiny_models, tokenizer, tmp_path, batches, arch, init
):
    base = str(tiny_models[arch])
    adapter = trained_adapter(base, tokenizer, tmp_path / "adapter", init)
    table = scored(LoRAModule(model_name=base, adapter=adapter, lora_dropout=0.0), batches)
    fresh = scored(LoRAModule(model_name=base, lora=False), batches)["model"]
    assert scores(table["base"]) == scores(fresh)
    # the adapter column: what plain peft computes with the adapter on a fresh base
    plain = LoRAModule(model_name=base, lora=False)
    plain.trainer = SimpleNamespace(precision="32-true", strategy=SimpleNamespace(root_device=torch.device("cpu")))
    plain.configure_model()
    plain.model = PeftModel.from_pretrained(plain.model, adapter).eval()
    plain.eval_modes = lambda: ["model"]
    plain_rows = [row for i, batch in enumerate(batches) for row in plain.test_step(batch, i)["scored"]["model"]]
    assert scores(table["adapter"]) == scores(plain_rows)
    assert [r["loss_sum"] for r in table["adapter"]] != pytest.approx([r["loss_sum"] for r in fresh], abs=1e-3)
