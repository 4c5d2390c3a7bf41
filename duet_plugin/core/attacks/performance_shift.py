"""DUET's Performance Shift (Zhong et al., 2026): one number for "forgot more, kept as much" against the base model.

``shift = Σ_forget (base - current) + Σ_utility (current - base)``, e.g. on MUSE-Books
``(F_base - F) + (F500_base - F500) + (R - R_base) + (MMLU - MMLU_base)``. Reverse-engineered from the paper's
Table 1 (it reproduces all four rows); positive is better. ``scale`` = 100 reports in points, as the paper does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def performance_shift(
    current: Mapping[str, float | None],
    base: Mapping[str, float | None],
    forget_keys: Sequence[str],
    utility_keys: Sequence[str],
    scale: float = 1.0,
) -> dict[str, Any]:
    """The shift and its signed terms. A key missing (or ``None``/NaN) on either side makes the shift missing
    (``None``): a partial sum would look like a real score."""
    if not forget_keys and not utility_keys:
        raise ValueError("performance_shift needs at least one forget or utility metric.")
    overlap = set(forget_keys) & set(utility_keys)
    if overlap:
        raise ValueError(f"{sorted(overlap)} listed as both forget and utility metrics.")
    terms: dict[str, float | None] = {}
    for key, sign in [*((k, -1.0) for k in forget_keys), *((k, 1.0) for k in utility_keys)]:
        now, then = current.get(key), base.get(key)
        if now is None or then is None or math.isnan(now) or math.isnan(then):
            terms[key] = None
        else:
            terms[key] = sign * (float(now) - float(then)) * scale
    missing = sorted(k for k, v in terms.items() if v is None)
    total = None if missing else sum(v for v in terms.values() if v is not None)
    return {"agg_value": total, "terms": terms, "missing": missing}
