"""DUET's Performance Shift against the paper's published rows (DUET, ICLR 2026: MUSE-Books, Table 1)."""

from __future__ import annotations

import math

import pytest

from duet_plugin.core.attacks.performance_shift import performance_shift

FORGET, UTILITY = ["R-Forget", "R-Forget-500"], ["R-Retain", "MMLU"]
BASE = {"R-Forget": 32.13, "R-Forget-500": 39.99, "R-Retain": 84.29, "MMLU": 61.46}


@pytest.mark.parametrize(
    ("row", "published"),
    [
        ({"R-Forget": 4.27, "R-Forget-500": 5.98, "R-Retain": 78.33, "MMLU": 61.45}, 55.90),  # DUET
        ({"R-Forget": 0.0, "R-Forget-500": 0.0, "R-Retain": 0.0, "MMLU": 24.87}, -48.76),  # GA
        ({"R-Forget": 24.18, "R-Forget-500": 26.83, "R-Retain": 69.69, "MMLU": 54.79}, -0.16),  # NPO
        ({"R-Forget": 0.47, "R-Forget-500": 0.64, "R-Retain": 58.33, "MMLU": 58.92}, 42.51),  # FLAT
    ],
)
def test_reproduces_the_papers_rows(row, published) -> None:
    out = performance_shift(row, BASE, FORGET, UTILITY)
    assert out["agg_value"] == pytest.approx(published, abs=0.006)
    assert out["missing"] == []


def test_terms_are_signed_and_scaled() -> None:
    out = performance_shift({"f": 0.25, "u": 0.5}, {"f": 0.75, "u": 0.625}, ["f"], ["u"], scale=100)
    assert out["terms"] == {"f": pytest.approx(50.0), "u": pytest.approx(-12.5)}
    assert out["agg_value"] == pytest.approx(37.5)
    assert performance_shift({"f": 0.5}, {"f": 0.5}, ["f"], [])["agg_value"] == 0.0


def test_a_missing_value_makes_the_shift_missing_not_partial() -> None:
    out = performance_shift({"f": 0.1, "u": None}, {"f": 0.9, "u": 0.5}, ["f"], ["u"])
    assert out["agg_value"] is None and out["missing"] == ["u"] and out["terms"]["f"] == pytest.approx(0.8)
    assert performance_shift({"f": math.nan}, {"f": 0.2}, ["f"], [])["agg_value"] is None
    assert performance_shift({}, {"f": 0.2}, ["f"], [])["missing"] == ["f"]


def test_bad_key_lists_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one"):
        performance_shift({}, {}, [], [])
    with pytest.raises(ValueError, match="both forget and utility"):
        performance_shift({"a": 1.0}, {"a": 1.0}, ["a"], ["a"])
