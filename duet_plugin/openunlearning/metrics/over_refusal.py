"""``over_refusal``: refusal rate on boundary questions, read from OU's own ROUGE generations.

Its ``pre_compute`` metrics are OU ``rouge`` metrics on the boundary sets (TOFU: ra_Q_A_ROUGE, wf_Q_A_ROUGE); OU
caches them, so next to ``model_utility`` (which computes the same ones) it costs no extra generation.
"""

from __future__ import annotations

from typing import Any

from evals.metrics.base import unlearning_metric

from duet_plugin.core.attacks.over_refusal import over_refusal_summary
from duet_plugin.core.attacks.refusal import DEFAULT_PHRASES


@unlearning_metric(name="over_refusal")
def over_refusal(model: Any, **kwargs: Any) -> dict[str, Any]:
    pre = kwargs.get("pre_compute") or {}
    if not pre:
        raise ValueError("over_refusal needs boundary generations: add OU rouge metrics under pre_compute.")
    score_key = kwargs.get("rouge_type") or "rougeL_recall"
    generations = {
        source: [
            (v.get("generation", ""), v.get(score_key))
            for v in (result.get("value_by_index") or {}).values()
            if isinstance(v, dict)
        ]
        for source, result in pre.items()
    }
    return over_refusal_summary(
        generations,
        phrases=kwargs.get("phrases") or DEFAULT_PHRASES,
        match_threshold=kwargs.get("match_threshold", 0.5),
    )
