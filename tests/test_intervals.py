"""The intervals, against cases computed by hand and published ones."""

import math

import pandas as pd
import pytest

from cleanclip_core.intervals import cell_intervals, newcombe_interval, paired_difference, t_interval, wilson_interval


def test_the_t_interval_of_three_values():
    # mean 0.7, sd 0.1, t(0.975, 2) = 4.302653: half-width 4.302653 * 0.1 / sqrt(3) = 0.248414
    assert t_interval([0.6, 0.7, 0.8]) == pytest.approx((0.7, 0.451586, 0.948414), abs=1e-6)


def test_the_wilson_interval_of_half_and_of_none():
    # z = 1.959964; 50 of 100: centre 0.5, half-width z / (1 + z^2/100) * sqrt(0.0025 + z^2/40000)
    assert wilson_interval(0.5, 100) == pytest.approx((0.403832, 0.596168), abs=1e-6)
    # 0 of 10: [0, z^2/10 / (1 + z^2/10)]
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, 0.277533), abs=1e-6)


def test_newcombes_interval_is_his_published_example():
    # Newcombe (1998), method 10: 56/70 - 48/80 = 0.2000, interval 0.0524 to 0.3339
    assert newcombe_interval(56 / 70, 70, 48 / 80, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_a_cell_of_several_replicates_gets_t_of_one_gets_wilson_and_of_none_nothing():
    replicates = pd.DataFrame({
        "cell": ["a", "a", "a", "b", "c"],
        "top1": [0.6, 0.7, 0.8, 0.5, math.nan],
        "n_images": [100] * 5,
    })
    table = cell_intervals(replicates, ["cell"], {"top1": "n_images"}).set_index("cell")
    assert table.n_replicates.to_dict() == {"a": 3, "b": 1, "c": 1}
    assert table.loc["a", ["top1", "top1_low", "top1_high"]].tolist() == pytest.approx([0.7, 0.451586, 0.948414], abs=1e-6)
    assert table.loc["b", ["top1_low", "top1_high"]].tolist() == pytest.approx([0.403832, 0.596168], abs=1e-6)
    assert table.loc["c", ["top1", "top1_low", "top1_high"]].isna().all()


def test_a_cells_interval_of_a_proportion_stays_within_zero_and_one():
    replicates = pd.DataFrame({"cell": ["a"] * 2, "asr": [0.0, 0.1], "n": [90, 90]})
    row = cell_intervals(replicates, ["cell"], {"asr": "n"}).iloc[0]
    assert (row.asr_low, row.asr_high) == (0.0, pytest.approx(0.05 + 12.706205 * 0.0707107 / math.sqrt(2), abs=1e-5))


def test_a_paired_difference_is_over_the_pairs_both_have():
    a, b = pd.Series([0.7, 0.8, 0.9, math.nan]), pd.Series([0.6, 0.6, 0.6, 0.5])
    # differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1
    assert paired_difference(a, b, 100, 100) == pytest.approx((0.2, -0.048414, 0.448414), abs=1e-6)
    assert paired_difference(a[:1], b[:1], 70, 80) == pytest.approx(
        (0.1, *newcombe_interval(0.7, 70, 0.6, 80)), abs=1e-12
    )
