"""The adapter's model card: results table and Hub metadata that agree, training settings, the loss-curve PNG."""

import csv
import functools
import json
import math

import pytest
from conftest import REPO, run_cli
from huggingface_hub import ModelCard
from PIL import Image

from lora_lightning.evaluation.report import results_rows
from lora_lightning.export.loss_plot import LOSS_PLOT, plot_loss_curves
from lora_lightning.export.model_card import (
    EVALUATION_END,
    EVALUATION_START,
    NOT_SCORED,
    card_results,
    card_section,
    card_with_evaluation,
    class_name,
    model_card,
    training_settings,
    write_card_evaluation,
)

HISTORY = {
    "base_model": "/models/SmolLM2-135M-Instruct",
    "global_step": 4,
    "epoch": 2,
    "best_val_loss": 1.9,
    "best_step": 4,
    "train_seconds": 12.5,
    "prompt_format": "chat",
    "mixing": "proportional",
    "data": {"bool_q": {"train": 16, "validation": 2, "dropped_too_long": 0}},
    "train_loss": [[1, 2.6], [2, 2.3], [3, 2.1], [4, 2.0]],
    "val_loss": [[0, 2.5], [2, 2.05], [4, 1.9]],
}
CONFIG = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
TITLE = "Rows never used for training or checkpoint selection (0-shot): bool_q 20 (validation); xsum 10 (test)"
SPLITS = {"bool_q": "validation", "xsum": "test"}


def results(shift: float = 0.0) -> dict:
    return {
        "base": {"bool_q": {"loss": 0.7894, "accuracy_rank": 50.0}, "xsum": {"loss": 2.3109, "rouge_l": 26.49241}},
        "adapter": {
            "bool_q": {"loss": 0.38141 + shift, "accuracy_rank": 55.0},
            "xsum": {"loss": 1.86633 + shift, "rouge_l": float("nan")},
        },
    }


def scored_card(card: str, shift: float = 0.0) -> str:
    rows = results_rows(results(shift))
    text = card_with_evaluation(card, card_section(rows, TITLE), card_results(rows, SPLITS), "tiny-lora")
    assert text is not None
    return text


def table_cells(card: str) -> dict[tuple[str, str], dict[str, str]]:
    """The evaluation section's table as {(task, metric): {column: cell}}."""
    section = card.split(EVALUATION_START, 1)[1].split(EVALUATION_END, 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    columns = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(columns, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    return {(r["task"], r["metric"]): r for r in rows}


def test_fresh_card_has_settings_plot_and_a_placeholder_for_results():
    settings = training_settings(
        {"learning_rate": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.1, "lr_schedule": "cosine"},
        {"batch_size": 8, "packing": True, "max_length": 384, "seed": 42},
        {
            "optimizer": "AdamW",
            "devices": 1,
            "accumulate_grad_batches": 2,
            "max_epochs": 2,
            "max_steps": -1,
            "precision": "bf16-mixed",
            "gradient_clip_val": 1.0,
        },
    )
    card = model_card(HISTORY, CONFIG, settings=settings, plot=LOSS_PLOT)
    meta = ModelCard(card).data
    assert meta.library_name == "peft" and "lora" in meta.tags
    assert meta.base_model is None  # a local path is no Hub id
    assert meta.eval_results is None
    assert f"{EVALUATION_START}\n\n{NOT_SCORED}\n\n{EVALUATION_END}" in card
    assert "![loss curves](loss_curves.png)" in card
    for row in (
        "| optimizer | AdamW |",
        "| learning rate | 0.001 |",
        "| schedule | 10% linear warmup, then cosine decay |",
        "| batch | 8 examples per device x 1 device(s) x 2 accumulated = 16 examples per optimizer step |",
        "| epochs | 2 |",
        "| precision | bf16-mixed |",
        "| gradient clipping | 1 |",
        "| r | 16 |",
        "| bool_q | 16 | 2 | 0 |",
    ):
        assert row in card
    assert "max steps" not in card and "LoRA+" not in card
    plus = training_settings({"loraplus_lr_ratio": 16.0}, {}, {"custom_scheduler": True})
    assert plus == {
        "schedule": "`model.lr_scheduler` from the config",
        "LoRA+ learning-rate ratio (lora_B / lora_A)": "16",
    }


def test_optimizer_is_named_whether_a_class_or_a_configured_callable():
    class SGD:
        pass

    class Instantiator:
        pass

    # what jsonargparse hands the module for `--model.optimizer torch.optim.SGD --model.optimizer.momentum 0.9`
    configured = functools.partial(print, Instantiator(), SGD, lr=0.1, momentum=0.9)
    assert class_name(SGD) == "SGD" and class_name(configured) == "SGD"
    assert class_name(None) is None
    hub_card = model_card({**HISTORY, "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"}, CONFIG)
    assert ModelCard(hub_card).data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_results_table_and_model_index_agree():
    card = scored_card(model_card(HISTORY, CONFIG, plot=LOSS_PLOT))
    assert NOT_SCORED not in card and TITLE in card
    cells = table_cells(card)
    assert cells[("bool_q", "loss")] == {
        "task": "bool_q",
        "metric": "loss",
        "base": "0.7894",
        "adapter": "0.3814",
        "delta": "-0.4080",
    }
    assert cells[("xsum", "rouge_l")]["adapter"] == "nan"
    meta = ModelCard(card).data
    assert meta.library_name == "peft" and meta.model_name == "tiny-lora"
    by_key = {(r.dataset_name, r.metric_type): r for r in meta.eval_results}
    # every finite adapter value of the table, nothing else: NaN is no number the Hub takes
    assert set(by_key) == {k for k, row in cells.items() if row["adapter"] != "nan"}
    for key, result in by_key.items():
        assert result.metric_value == float(cells[key]["adapter"])
        assert result.task_type == "text-generation" and result.dataset_type == key[0]
        assert result.dataset_split == SPLITS[key[0]]
    assert by_key[("bool_q", "accuracy_rank")].metric_name == "accuracy (rank classification)"
    # the metadata is the Hub's model-index layout
    front = card.split("---\n")[1]
    assert "model-index:\n- name: tiny-lora\n  results:\n  - task:\n      type: text-generation\n" in front
    assert "    dataset:\n      name: bool_q\n      type: bool_q\n      split: validation\n" in front


def test_scoring_again_replaces_the_section_and_metadata():
    once = scored_card(model_card(HISTORY, CONFIG))
    twice = scored_card(once, shift=0.5)
    assert twice.count(EVALUATION_START) == 1 and twice.count(TITLE) == 1
    assert twice.count("model-index") == 1 and twice.count("## Use") == 1
    assert table_cells(twice)[("bool_q", "loss")]["adapter"] == "0.8814"
    values = {(r.dataset_name, r.metric_type): r.metric_value for r in ModelCard(twice).data.eval_results}
    assert values[("bool_q", "loss")] == 0.8814 and len(values) == 3
    assert twice.split(EVALUATION_END)[1] == once.split(EVALUATION_END)[1]  # the rest of the card is kept


def test_only_this_projects_cards_are_rewritten(tmp_path):
    rows = results_rows(results())
    args = (card_section(rows, TITLE), card_results(rows, SPLITS), "tiny-lora")
    assert write_card_evaluation(tmp_path, *args) is False and not (tmp_path / "README.md").exists()
    foreign = "---\nlicense: mit\n---\n# Someone's own card\n"
    (tmp_path / "README.md").write_text(foreign)
    assert write_card_evaluation(tmp_path, *args) is False
    assert (tmp_path / "README.md").read_text() == foreign
    (tmp_path / "README.md").write_text(model_card(HISTORY, CONFIG))
    assert write_card_evaluation(tmp_path, *args) is True
    assert table_cells((tmp_path / "README.md").read_text())[("xsum", "loss")]["adapter"] == "1.8663"
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary file left


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_loss_plot_is_a_small_png(tmp_path):
    path = tmp_path / LOSS_PLOT
    assert plot_loss_curves(HISTORY, path) is True
    assert png_size(path) == (600, 350)
    assert 2_000 < path.stat().st_size < 200_000
    with Image.open(path) as image:
        image.verify()
    assert plot_loss_curves({"train_loss": [], "val_loss": []}, tmp_path / "empty.png") is False
    assert not (tmp_path / "empty.png").exists()
    # validation points alone (an export right after the first validation) still draw
    assert plot_loss_curves({"val_loss": [[0, 2.5]], "train_loss": [[1, float("nan")]]}, tmp_path / "val.png") is True
    assert png_size(tmp_path / "val.png") == (600, 350)


@pytest.mark.slow
def test_fit_then_test_writes_the_card_with_results_and_loss_curves(tiny_models, tmp_path):
    config = str(REPO / "configs" / "default.yaml")
    fit = run_cli(
        "fit",
        "--config",
        config,
        "--model.model_name",
        str(tiny_models["llama"]),
        "--model.lora_r",
        "4",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--data.max_examples_per_task",
        "4",
        "--data.max_val_examples_per_task",
        "4",
        "--data.batch_size",
        "4",
        "--trainer.max_epochs",
        "1",
        "--trainer.log_every_n_steps",
        "1",
        "--samples.samples_per_task",
        "0",
        "--trainer.precision",
        "32-true",
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    adapter = tmp_path / "adapter"
    history = json.loads((adapter / "training_history.json").read_text())
    assert history["global_step"] == 3 and len(history["train_loss"]) == 3
    assert NOT_SCORED in (adapter / "README.md").read_text()
    scored = run_cli(
        "test",
        "--config",
        config,
        "--model.model_name",
        "null",
        "--model.adapter",
        str(adapter),
        "--data.eval_examples_per_task",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.precision",
        "32-true",
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    card = (adapter / "README.md").read_text()
    assert NOT_SCORED not in card and "![loss curves](loss_curves.png)" in card
    assert png_size(adapter / LOSS_PLOT) == (600, 350)
    for row in ("| optimizer | AdamW |", "| learning rate | 0.001 |", "| precision | 32-true |", "| epochs | 1 |"):
        assert row in card
    title = (tmp_path / "eval_results.md").read_text().splitlines()[0].removeprefix("## ")
    assert "bool_q 2 (validation)" in title and f"{title}." in card
    cells = table_cells(card)
    table = list(csv.DictReader((tmp_path / "eval_results.csv").open()))
    assert len(table) == len(cells) >= 9  # bool_q 4 metrics, common_gen 4, xsum 3
    for row in table:
        for column in ("base", "adapter", "delta"):
            assert cells[(row["task"], row["metric"])][column] == f"{float(row[column]):.4f}"
    meta = ModelCard(card).data
    values = {(r.dataset_name, r.metric_type): r.metric_value for r in meta.eval_results}
    expected = {(r["task"], r["metric"]): float(r["adapter"]) for r in table if math.isfinite(float(r["adapter"]))}
    assert values.keys() == expected.keys()
    for key, value in values.items():
        assert value == pytest.approx(expected[key], abs=5e-5)
    assert {r.dataset_split for r in meta.eval_results} == {"validation"}
