"""Mixing strategies: realised per-task counts against the formula."""

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
    idx = take_indices(3, 7, seed=1)
    assert len(idx) == 7 and sorted(set(idx)) == [0, 1, 2]
    assert idx[:3] == idx[3:6] and idx == take_indices(3, 7, seed=1)
    assert sorted(take_indices(10, 10, seed=2)) == list(range(10))


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
