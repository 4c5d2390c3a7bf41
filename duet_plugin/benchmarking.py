"""Framework-free helpers of the efficiency benchmark (``scripts/bench_efficiency.py``): medians with their spread
over repeats, ratios against a baseline, the peak of an allocation trace, and markdown tables.

A *repeat* is one pass over the same batches; every method's repeat median is its step time in that pass, and the
spread is the range of the repeat medians. Ratios are taken per repeat (method median / baseline median of the same
pass, both measured interleaved), so noise that hits one pass hits both numbers of the ratio.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Spread:
    """The median of per-repeat values and their range (``lo``..``hi``)."""

    median: float
    lo: float
    hi: float

    def format(self, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
        """``median (lo-hi)unit``; just the median when the range collapses at that precision."""
        mid, lo, hi = (f"{v * scale:.{digits}f}" for v in (self.median, self.lo, self.hi))
        return f"{mid}{unit}" if lo == hi else f"{mid} ({lo}-{hi}){unit}"


def repeat_medians(samples: Sequence[Sequence[float]]) -> list[float]:
    """The median of each repeat's samples."""
    if not samples or any(len(s) == 0 for s in samples):
        raise ValueError("every repeat needs at least one sample")
    return [statistics.median(s) for s in samples]


def spread(values: Sequence[float]) -> Spread:
    """Median and range of per-repeat values."""
    if not values:
        raise ValueError("no values")
    return Spread(statistics.median(values), min(values), max(values))


def step_spread(samples: Sequence[Sequence[float]]) -> Spread:
    """Median step time over repeats (each repeat's median) and the range of the repeat medians."""
    return spread(repeat_medians(samples))


def ratio_spread(samples: Sequence[Sequence[float]], baseline: Sequence[Sequence[float]]) -> Spread:
    """Per-repeat ratio of medians, ``samples`` over ``baseline`` (the same repeats, measured interleaved)."""
    if len(samples) != len(baseline):
        raise ValueError(f"{len(samples)} repeats against {len(baseline)} baseline repeats")
    return spread([m / b for m, b in zip(repeat_medians(samples), repeat_medians(baseline), strict=True)])


def rotated(items: Sequence[T], shift: int) -> list[T]:
    """``items`` started at position ``shift`` (mod len): the round-robin order of one step."""
    if not items:
        return []
    k = shift % len(items)
    return [*items[k:], *items[:k]]


def peak_of_trace(deltas: Iterable[int]) -> int:
    """Highest running sum of a time-ordered allocation trace (+bytes allocated, -bytes freed), from 0.

    It is the peak of the bytes allocated after the trace started and still live; never below 0.
    """
    current = peak = 0
    for delta in deltas:
        current += delta
        peak = max(peak, current)
    return peak


def format_bytes(n: float) -> str:
    """Bytes in KiB / MiB / GiB with 3 significant-ish digits."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.{1 if value < 100 else 0}f} {unit}"
    return f"{int(n)} B"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table; cells are ``str()``-ed, pipes escaped."""
    rows = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells for {len(headers)} headers")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def target_verdict(value: Spread, limit: float) -> str:
    """``met`` when even the worst repeat is within ``limit``, ``not met`` when even the best is above it, else
    ``borderline`` (the repeats straddle the limit)."""
    if value.hi <= limit:
        return "met"
    if value.lo > limit:
        return "not met"
    return "borderline"


def ratios(values: Mapping[str, float], base: str) -> dict[str, float]:
    """Every value over ``values[base]``."""
    if values.get(base, 0) == 0:
        raise ValueError(f"baseline {base!r} is missing or zero")
    return {k: v / values[base] for k, v in values.items()}
