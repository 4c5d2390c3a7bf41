"""``performance_shift``: DUET's aggregate against the original (pre-unlearning) model's logs.

``shift = Σ_forget (original - current) + Σ_utility (current - original)`` over the metrics under ``pre_compute``
(``duet_plugin/core/attacks/performance_shift.py``). Without ``original_logs_path`` it is missing (``None``, with a
warning), as OU's forget_quality is without retain logs. Cost: its pre_compute metrics (cached next to OU's suite).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from evals.metrics.base import UnlearningMetric

from duet_plugin.core.attacks.performance_shift import performance_shift

logger = logging.getLogger(__name__)


def _shift(model: Any, **kwargs: Any) -> dict[str, Any]:
    current = {k: (v or {}).get("agg_value") for k, v in (kwargs.get("pre_compute") or {}).items()}
    forget, utility = list(kwargs.get("forget") or []), list(kwargs.get("utility") or [])
    path = kwargs.get("original_logs_path")
    if path is None:
        logger.warning("performance_shift: no original_logs_path, so the shift is missing (None).")
        return {"agg_value": None, "current": current}
    logs = json.loads(Path(path).read_text())
    original = {k: (logs.get(k) or {}).get("agg_value") for k in [*forget, *utility]}
    out = performance_shift(current, original, forget, utility, scale=float(kwargs.get("scale", 1.0)))
    if out["missing"]:
        logger.warning("performance_shift: %s missing in this model's or the original's logs.", out["missing"])
    return {**out, "current": current, "original": original}


class PerformanceShift(UnlearningMetric):
    """Checks its configuration before OU computes the pre_compute metrics."""

    def evaluate(self, model: Any, metric_name: str, cache: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        children = set(kwargs.get("pre_compute") or {})
        named = [*(kwargs.get("forget") or []), *(kwargs.get("utility") or [])]
        if not named:
            raise ValueError(f"{metric_name}: list the forget and utility metrics (forget: [...], utility: [...]).")
        stray = sorted(set(named) - children)
        if stray:
            raise ValueError(f"{metric_name}: {stray} not under pre_compute (it has {sorted(children)}).")
        path = kwargs.get("original_logs_path")
        if path is not None and not Path(path).is_file():
            raise ValueError(
                f"{metric_name}: original_logs_path={path} is not a file; point it at the EVAL.json that OU's "
                f"eval.py wrote for the model before unlearning (with this metric in its suite), or set it to null."
            )
        return super().evaluate(model, metric_name, cache, **kwargs)


performance_shift_metric = PerformanceShift("performance_shift", _shift)
