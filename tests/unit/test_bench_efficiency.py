"""The efficiency benchmark's framework-free helpers: medians and spreads over repeats, ratios, peaks, tables."""

from __future__ import annotations

import pytest

from duet_plugin.benchmarking import (
    Spread,
    format_bytes,
    markdown_table,
    peak_of_trace,
    ratio_spread,
    ratios,
    repeat_medians,
    rotated,
    spread,
    step_spread,
    target_verdict,
)


def test_step_spread_is_median_of_repeat_medians_with_their_range() -> None:
    samples = [[1.0, 9.0, 2.0], [3.0, 4.0, 100.0], [2.5, 2.5, 2.5]]
    assert repeat_medians(samples) == [2.0, 4.0, 2.5]
    assert step_spread(samples) == Spread(2.5, 2.0, 4.0)


def test_ratio_spread_is_taken_per_repeat() -> None:
    base = [[2.0, 2.0], [4.0, 4.0]]
    method = [[1.0, 1.0], [4.0, 4.0]]  # 0.5x in the first pass, 1.0x in the second
    assert ratio_spread(method, base) == Spread(0.75, 0.5, 1.0)
    with pytest.raises(ValueError, match="repeats"):
        ratio_spread(method, base[:1])


def test_empty_repeats_are_rejected() -> None:
    with pytest.raises(ValueError):
        repeat_medians([[1.0], []])
    with pytest.raises(ValueError):
        spread([])


def test_spread_format_collapses_an_empty_range() -> None:
    assert Spread(0.1234, 0.1, 0.2).format(1000, 1, " ms") == "123.4 (100.0-200.0) ms"
    assert Spread(1.0, 1.0, 1.0).format(1, 2, "x") == "1.00x"


def test_rotated_round_robin() -> None:
    assert rotated([1, 2, 3], 0) == [1, 2, 3]
    assert rotated([1, 2, 3], 4) == [2, 3, 1]
    assert rotated([], 3) == []


def test_peak_of_trace() -> None:
    assert peak_of_trace([10, 20, -25, 30, -35]) == 35
    assert peak_of_trace([-5, 3]) == 0  # frees of memory allocated before the trace do not make a peak
    assert peak_of_trace([]) == 0


def test_target_verdict() -> None:
    assert target_verdict(Spread(0.8, 0.7, 0.95), 1.0) == "met"
    assert target_verdict(Spread(1.1, 1.05, 1.2), 1.0) == "not met"
    assert target_verdict(Spread(0.98, 0.9, 1.1), 1.0) == "borderline"


def test_ratios_and_bytes_and_table() -> None:
    assert ratios({"a": 2.0, "b": 3.0}, "a") == {"a": 1.0, "b": 1.5}
    with pytest.raises(ValueError, match="baseline"):
        ratios({"a": 0.0}, "a")
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 2**20) == "3.0 MiB"
    assert format_bytes(300 * 2**10) == "300 KiB"
    table = markdown_table(["m", "x"], [["a|b", 1.5]])
    assert table.splitlines() == ["| m | x |", "|---|---|", "| a\\|b | 1.5 |"]
    with pytest.raises(ValueError, match="cells"):
        markdown_table(["m", "x"], [["only one"]])
