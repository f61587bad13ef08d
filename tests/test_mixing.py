"""Mixing strategies: realised per-task counts against the formula."""

import json
import math
from collections import Counter

import pytest

from lora_lightning.data import FlanDataModule
from lora_lightning.data.mixing import mixture_counts, take_indices

SIZES = {"a": 1000, "b": 100, "c": 10}


def test_proportional_is_capped_size():
    assert mixture_counts(SIZES, "proportional", cap=300) == {"a": 300, "b": 100, "c": 10}
    assert mixture_counts(SIZES, "proportional") == SIZES


def test_uniform_gives_equal_shares_of_the_capped_total():
    counts = mixture_counts(SIZES, "uniform", cap=300)
    assert sum(counts.values()) == 410
    assert sorted(counts.values()) == [136, 137, 137]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_temperature_rates_follow_size_to_the_one_over_t(temperature):
    counts = mixture_counts(SIZES, "temperature", cap=300, temperature=temperature)
    capped = {"a": 300, "b": 100, "c": 10}
    norm = sum(m ** (1 / temperature) for m in capped.values())
    for task, m in capped.items():
        exact = 410 * m ** (1 / temperature) / norm
        assert abs(counts[task] - exact) < 1
    assert sum(counts.values()) == 410
    if temperature == 1.0:
        assert counts == capped


def test_higher_temperature_flattens_the_mix():
    t2 = mixture_counts(SIZES, "temperature", cap=300, temperature=2)
    t5 = mixture_counts(SIZES, "temperature", cap=300, temperature=5)
    assert t5["c"] > t2["c"] > 10 and t5["a"] < t2["a"] < 300


def test_take_indices_cycles_a_seeded_shuffle():
    idx = take_indices(3, 7, seed=1).tolist()
    assert len(idx) == 7 and sorted(set(idx)) == [0, 1, 2]
    assert idx[:3] == idx[3:6] and idx == take_indices(3, 7, seed=1).tolist()
    assert sorted(take_indices(10, 10, seed=2).tolist()) == list(range(10))
    assert len(set(take_indices(1000, 40, seed=3).tolist())) == 40  # no row twice while rows remain


def test_a_few_rows_of_a_million_cost_memory_in_the_count_not_the_size():
    import tracemalloc

    tracemalloc.start()
    idx = take_indices(1_000_000, 2000, seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(set(idx.tolist())) == 2000 and 0 <= idx.min() and idx.max() < 1_000_000
    assert peak < 400_000, f"{peak} bytes traced: an index per row of the big task (8 MB) was made"
    assert take_indices(1_000_000, 2000, seed=0).tolist() == idx.tolist()


def test_one_to_a_thousand_mix_draws_the_stated_shares():
    """A task of 1,000,000 rows beside one of 1,000 (1:1000), capped at 20,000 then temperature-mixed."""
    sizes = {"big": 1_000_000, "small": 1000}
    counts = mixture_counts(sizes, "temperature", cap=20_000, temperature=2.0)
    # capped 20,000 and 1,000: shares sqrt(20000) : sqrt(1000) of 21,000 examples
    exact = 21_000 * 1000**0.5 / (20_000**0.5 + 1000**0.5)
    assert counts == {"big": 21_000 - round(exact), "small": round(exact)} == {"big": 17_162, "small": 3838}
    drawn = {t: take_indices(n, counts[t], seed=42) for t, n in sizes.items()}
    assert len(set(drawn["big"].tolist())) == 17_162  # distinct rows of the big task: no repeats
    small = Counter(drawn["small"].tolist())  # the small task repeats its rows: 3 or 4 times each
    assert sorted(Counter(small.values()).items()) == [(3, 162), (4, 838)]
    assert drawn["big"].max() < 1_000_000


def test_datamodule_mixes_two_tasks_one_to_a_thousand(tiny_models, tmp_path):
    """20,300 bool_q rows (20,000 after the capped carve of 200 + 100) beside 24 paws rows (20 after
    2 + 2): capped at 400 and temperature-mixed, the training set holds the formula's counts."""
    big, small = tmp_path / "bool_q.jsonl", tmp_path / "paws.jsonl"
    big.write_text(
        "\n".join(json.dumps({"question": f"q {i}", "answer": i % 3 == 0, "passage": "p"}) for i in range(20_300))
    )
    small.write_text(
        "\n".join(json.dumps({"id": i, "sentence1": f"a {i}", "sentence2": "b", "label": i % 2}) for i in range(24))
    )
    dm = FlanDataModule(
        tasks=["bool_q", "paws"],
        data_files={"bool_q": str(big), "paws": str(small)},
        tokenizer=str(tiny_models["llama"]),
        max_examples_per_task=400,
        mixing="temperature",
        mixing_temperature=2.0,
        cache_dir=None,
    )
    dm.setup("fit")
    assert {t: s["available"] for t, s in dm.stats.items()} == {"bool_q": 20_000, "paws": 20}
    realised = Counter(dm.train_set["task"])
    exact = 420 * 20**0.5 / (400**0.5 + 20**0.5)  # capped 400 and 20: shares sqrt(400) : sqrt(20)
    assert realised == mixture_counts({"bool_q": 20_000, "paws": 20}, "temperature", 400, 2.0)
    assert realised == {"bool_q": 420 - round(exact), "paws": round(exact)} == {"bool_q": 343, "paws": 77}
    bool_q_ids = [e for e, t in zip(dm.train_set["example_id"], dm.train_set["task"]) if t == "bool_q"]
    assert len(set(bool_q_ids)) == 343  # 343 distinct rows of the big task, none twice


@pytest.mark.parametrize(
    "mixing, cap, temperature", [("proportional", 50, 2.0), ("uniform", 50, 2.0), ("temperature", None, 3.0)]
)
def test_datamodule_realises_the_formula(tiny_models, mixing, cap, temperature):
    dm = FlanDataModule(
        tokenizer=str(tiny_models["llama"]),
        mixing=mixing,
        max_examples_per_task=cap,
        mixing_temperature=temperature,
        max_length=2048,
        cache_dir=None,
    )
    dm.setup("fit")
    sizes = {"bool_q": 72, "common_gen": 72, "xsum": 36}  # the demo mix's training rows less the 10% selection slice
    assert dict(Counter(dm.train_set["task"])) == mixture_counts(sizes, mixing, cap, temperature)
    assert {t: s["available"] for t, s in dm.stats.items()} == sizes
    if mixing == "uniform":
        # capped sizes 50, 50, 36: 136 examples, a third each
        assert sorted(Counter(dm.train_set["task"]).values()) == [45, 45, 46]
        # xsum has 36 rows but gets 45 or 46 examples: rows repeat, each time with a fresh template draw
        xsum = [ids for ids, t in zip(dm.train_set["input_ids"], dm.train_set["task"]) if t == "xsum"]
        assert len(xsum) > 36 and len({tuple(x) for x in xsum}) > 36
    if mixing == "temperature":
        exact = 180 * 36 ** (1 / 3) / sum(n ** (1 / 3) for n in sizes.values())
        assert math.isclose(Counter(dm.train_set["task"])["xsum"], exact, abs_tol=1)


def test_length_grouping_cuts_padding_and_keeps_a_seeded_complete_order():
    import random

    from lora_lightning.data.sampling import ResumableSampler

    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(203)]
    data = list(range(203))

    def padding(order, bs=8):
        batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    plain = list(ResumableSampler(data, seed=1, batch_size=8))
    grouped = ResumableSampler(data, seed=1, batch_size=8, lengths=lengths)
    first = list(grouped)
    assert sorted(first) == sorted(plain) == data  # every example once
    assert padding(first) < 0.5 * padding(plain)
    assert list(grouped) == first  # same epoch, same order
    grouped.set_epoch(1)
    assert list(grouped) != first
    # batch boundaries hold: only the last batch is short
    sizes = [len(first[i : i + 8]) for i in range(0, 203, 8)]
    assert sizes[:-1] == [8] * 25 and sizes[-1] == 3
    # resuming after 4 batches continues with the 5th
    resumed = ResumableSampler(data, seed=1, batch_size=8, lengths=lengths)
    resumed.resume_at = (0, 4)
    assert list(resumed) == first[32:]
    assert list(resumed) == first  # the resume point applies to one iteration of that epoch only
    resumed.resume_at = (1, 4)  # a position in another epoch does not apply to this one
    assert list(resumed) == first
