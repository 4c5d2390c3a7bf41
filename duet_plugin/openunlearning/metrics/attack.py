"""The shape every attack metric shares: re-measure child OU metrics on attacked copies of the model.

The children are configured under ``pre_compute`` (so OU instantiates them as it does for its own aggregate
metrics), but unlike OU's pre_compute they are evaluated on each attacked copy, never on the model itself, which
is left bit-identical. Result: ``value_by_attack[variant][child] = child's agg_value`` and ``agg_value`` = the
attacker's best value of the first child over the variants.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from evals.metrics.base import UnlearningMetric

logger = logging.getLogger(__name__)

#: Keys OU's evaluator passes to every metric besides its own config.
SHARED_KWARGS = ("tokenizer", "template_args")


class AttackMetric(UnlearningMetric):
    """Subclasses implement :meth:`attacked_models` (``(variant, copy, info)`` one at a time) and set ``OPTIONS``."""

    OPTIONS: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, name: str) -> None:
        super().__init__(name=name, metric_fn=self._unused)

    @staticmethod
    def _unused(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Attack metrics evaluate through AttackMetric.evaluate.")

    def attacked_models(self, model: Any, **options: Any) -> Iterator[tuple[str, Any, dict[str, Any]]]:
        raise NotImplementedError

    def evaluate(self, model: Any, metric_name: str, cache: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        children = dict(kwargs.pop("pre_compute", None) or {})
        if not children:
            raise ValueError(
                f"{metric_name}: no metric to re-measure. Add one under pre_compute, e.g. "
                f"defaults: [.@pre_compute.forget_Q_A_ROUGE: forget_Q_A_ROUGE] (see the plugin's {self.name}.yaml)."
            )
        higher_is_worse = bool(kwargs.pop("higher_is_worse", True))
        options = {k: kwargs.pop(k, default) for k, default in self.OPTIONS.items()}
        unknown = sorted(set(kwargs) - set(SHARED_KWARGS) - {"handler"})
        if unknown:
            raise ValueError(f"{metric_name}: unknown option(s) {unknown}; {self.name} takes {sorted(self.OPTIONS)}.")
        shared = {k: kwargs[k] for k in SHARED_KWARGS if k in kwargs}
        by_attack: dict[str, dict[str, Any]] = {}
        info: dict[str, dict[str, Any]] = {}
        for variant, attacked, details in self.attacked_models(model, **options):
            by_attack[variant] = {}
            for child_name, child_cfg in children.items():
                child = self.pre_compute_metrics.get(child_name)
                if child is None:
                    raise ValueError(f"{metric_name}: pre_compute metric {child_name!r} was not instantiated.")
                cfg = dict(child_cfg)
                key = cfg.get("access_key", child_name)
                result = child.evaluate(attacked, child_name, cache={}, **shared, **cfg)
                by_attack[variant][key] = result.get("agg_value") if isinstance(result, Mapping) else result
                logger.info("%s %s: %s = %s", metric_name, variant, key, by_attack[variant][key])
            info[variant] = details
            del attacked
        first = next(iter(children.values())).get("access_key", next(iter(children)))
        values = [v[first] for v in by_attack.values() if v.get(first) is not None and not math.isnan(v[first])]
        worst = (max(values) if higher_is_worse else min(values)) if values else None
        out = {"agg_value": worst, "value_by_attack": by_attack, "attack_info": info, "worst_of": first}
        cache[metric_name] = out
        return out
