"""benchmarks/quality.py's arithmetic on fixed inputs: the gain share, its median, the interval, the split."""

import importlib.util
import math

import pytest
from conftest import REPO
from scipy.stats import binomtest

spec = importlib.util.spec_from_file_location("quality", REPO / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


def test_gain_share_is_the_fraction_of_full_fine_tunings_gain():
    assert quality.gain_share(arm=55.0, base=50.0, full=60.0) == pytest.approx(0.5)
    assert quality.gain_share(arm=65.0, base=50.0, full=60.0) == pytest.approx(1.5)
    assert quality.gain_share(arm=45.0, base=50.0, full=60.0) == pytest.approx(-0.5)
    # lower-is-better (loss): both fall, the share is positive
    assert quality.gain_share(arm=1.5, base=2.0, full=1.0, lower_is_better=True) == pytest.approx(0.5)
    # full fine-tuning did not improve the metric: no gain to take a share of
    assert quality.gain_share(arm=51.0, base=50.0, full=50.0) is None
    assert quality.gain_share(arm=61.0, base=66.0, full=48.0) is None
    assert quality.gain_share(arm=1.5, base=2.0, full=2.5, lower_is_better=True) is None
    assert quality.gain_share(arm=float("nan"), base=50.0, full=60.0) is None


def test_median_share_over_the_metrics_ignores_undefined_and_perplexity():
    results = {
        "base": {"a": {"loss": 2.0, "perplexity": 7.4, "rouge_l": 20.0}, "b": {"accuracy_rank": 50.0}},
        "full": {"a": {"loss": 1.0, "perplexity": 2.7, "rouge_l": 30.0}, "b": {"accuracy_rank": 50.0}},
        "lora": {"a": {"loss": 1.2, "perplexity": 3.3, "rouge_l": 29.0}, "b": {"accuracy_rank": 60.0}},
    }
    got = quality.shares(results, "lora")
    assert set(got) == {("a", "loss"), ("a", "rouge_l"), ("b", "accuracy_rank")}
    assert got[("a", "loss")] == pytest.approx(0.8)
    assert got[("a", "rouge_l")] == pytest.approx(0.9)
    assert got[("b", "accuracy_rank")] is None
    assert quality.median_share(got) == pytest.approx(0.85)
    assert quality.median_share({("x", "y"): None}) is None


@pytest.mark.parametrize("percent,n", [(45.0, 20), (64.0, 100), (0.0, 30), (100.0, 12), (100.0, 1)])
def test_wilson_interval_equals_scipy(percent, n):
    successes = round(percent * n / 100)
    ci = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = quality.wilson_interval(percent, n)
    assert low == pytest.approx(100 * ci.low, abs=1e-6) and high == pytest.approx(100 * ci.high, abs=1e-6)
    assert all(math.isnan(v) for v in quality.wilson_interval(50.0, 0))


def test_table_has_every_metric_per_arm_intervals_and_the_median_row():
    results = {
        "base": {"bool_q": {"loss": 0.8, "accuracy_rank": 50.0}},
        "full": {"bool_q": {"loss": 0.4, "accuracy_rank": 70.0}},
        "lora": {"bool_q": {"loss": 0.5, "accuracy_rank": 60.0}},
    }
    table = quality.results_table(results, {"bool_q": 100}, ["lora"])
    assert "| bool_q | loss | 100 | 0.8000 | 0.4000 | 0.5000 |" in table
    low, high = quality.wilson_interval(60.0, 100)
    assert f"60.0 [{low:.1f}, {high:.1f}]" in table
    assert "| bool_q | loss | 75% |" in table and "| bool_q | accuracy_rank | 50% |" in table
    assert "| **median** | | **62%** |" in table  # median of 0.75 and 0.5


def test_split_keeps_groups_whole_and_is_seeded():
    rows = [{"concept_set_idx": i // 3, "target": f"s{i}"} for i in range(30)]  # 10 groups of 3
    train, held = quality.split_rows("common_gen", rows, held_out=4, seed=1)
    assert len(held) == 12 and len(train) == 18
    assert not {r["concept_set_idx"] for r in train} & {r["concept_set_idx"] for r in held}
    assert quality.split_rows("common_gen", rows, 4, 1) == (train, held)
    assert quality.split_rows("common_gen", rows, 4, 2) != (train, held)
    plain = [{"question": str(i)} for i in range(10)]
    train, held = quality.split_rows("bool_q", plain, held_out=3, seed=1, train_cap=5)
    assert len(held) == 3 and len(train) == 5 and not {r["question"] for r in train} & {r["question"] for r in held}
