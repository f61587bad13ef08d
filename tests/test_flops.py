"""FLOPs of the work done (for MFU), counted by hand on the tiny Llama."""

import torch

from lora_lightning.loading import load_causal_lm
from lora_lightning.model.flops import batch_flops, linear_weight_count, measured_peak_flops
from lora_lightning.model.lora import apply_lora


def test_linear_weights_and_flops_by_hand(tiny_models):
    model = apply_lora(load_causal_lm(str(tiny_models["llama"])), r=4)
    # per layer: q 64x64, k 64x32, v 64x32, o 64x64, gate/up/down 64x128 -> 36,864; two layers.
    # LoRA adds A (64x4) and B (4x64) on q, A (64x4) and B (4x32) on v: 896 per layer.
    assert linear_weight_count(model) == (2 * 36864 + 2 * 896, 2 * 896)
    vocab = model.get_base_model().config.vocab_size
    batch = {
        "attention_mask": torch.tensor([[1] * 10, [1] * 6 + [0] * 4]),
        "labels": torch.tensor([[-100] * 7 + [5, 6, 7], [-100] * 4 + [8, 9] + [-100] * 4]),
    }
    tokens = 16  # real tokens: 10 + 6
    completion = 5  # label positions after the shift: 3 in the first row, 2 in the second
    forward = 2 * 75520 * tokens + 2 * 2 * 64 * (10**2 + 6**2) + 2 * 64 * vocab * completion
    assert batch_flops(model, batch) == 2 * forward + 2 * 1792 * tokens
    full_head = 2 * 75520 * tokens + 2 * 2 * 64 * 136 + 2 * 64 * vocab * tokens
    assert batch_flops(model, batch, completion_only_head=False) == 2 * full_head + 2 * 1792 * tokens


def test_cpu_peak_is_measured_and_positive():
    assert measured_peak_flops(torch.float32, size=128, seconds=0.05) > 1e6


def test_the_cpu_peak_is_measured_once_per_machine_and_cached_with_its_date(tmp_path, monkeypatch):
    import datetime
    import json

    from lora_lightning.model import flops

    calls = []

    def fake_measure(dtype, size, seconds):
        calls.append((dtype, size))
        return [3e11, 5e11, 4e11][len(calls) - 1]

    monkeypatch.setattr(flops, "measured_peak_flops", fake_measure)
    cache = tmp_path / "peak_flops.json"
    value, where = flops.cpu_peak_flops(torch.bfloat16, cache)
    assert value == 5e11 and len(calls) == 3  # the best of three trials
    assert "measured now, best of 3" in where and str(cache) in where
    entry = json.loads(cache.read_text())[flops.machine_key(torch.bfloat16)]
    assert entry == {"flops": 5e11, "date": datetime.date.today().isoformat(), "trials": 3}
    again, where = flops.cpu_peak_flops(torch.bfloat16, cache)  # a later run: read back, not measured
    assert again == 5e11 and len(calls) == 3 and f"measured {entry['date']}" in where
    assert flops.machine_key(torch.bfloat16) != flops.machine_key(torch.float32)
    cache.write_text("not json")  # a damaged cache is measured again and rewritten
    calls.clear()
    assert flops.cpu_peak_flops(torch.float32, cache)[0] == 5e11 and len(calls) == 3
    assert json.loads(cache.read_text())[flops.machine_key(torch.float32)]["flops"] == 5e11


def test_an_unwritable_cache_still_gives_the_peak(tmp_path, monkeypatch):
    from lora_lightning.model import flops

    monkeypatch.setattr(flops, "measured_peak_flops", lambda dtype, size, seconds: 2e11)
    blocker = tmp_path / "file"
    blocker.write_text("")
    value, where = flops.cpu_peak_flops(torch.float32, blocker / "peak_flops.json")
    assert value == 2e11 and "not cached" in where


def test_a_peak_is_kept_per_cpu_instruction_set_not_only_per_model_name():
    """One cloud model name comes with and without AMX; a peak measured on one must not serve the other."""
    from lora_lightning.model import flops

    common = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 fma avx512f avx512_bf16"
    with_amx = flops.machine_key(torch.bfloat16, common + " amx_bf16 amx_tile\n")
    without = flops.machine_key(torch.bfloat16, common + "\n")
    assert with_amx != without
    assert "Intel(R) Xeon(R) Processor (amx_bf16+amx_tile+avx512_bf16+avx512f+avx2+fma)" in with_amx
    assert "Intel(R) Xeon(R) Processor (avx512_bf16+avx512f+avx2+fma)" in without
    arm = flops.machine_key(torch.float32, "processor\t: 0\nFeatures\t: fp asimd sve\n")
    assert "(asimd+sve)" in arm and "float32" in arm
