"""The shape every attack metric shares: re-measure child OU metrics under attack.

The children are configured under ``pre_compute`` (so OU instantiates them as it does for its own aggregate
metrics). Unlike OU's pre_compute, each child is evaluated once per attack variant: on an attacked copy of the
model (relearning, quantization) or on attacked inputs (prompt templates, prefilled answers, by swapping the child's
``QADataset`` for :class:`AttackQADataset`). The evaluated model is left bit-identical.

Result: ``unattacked[child]`` (from OU's cache when the child already ran), ``value_by_attack[variant][child]``,
``refusal_by_attack[variant][child]`` for children that generate text, ``attack_info[variant]`` (with one input
the children saw, for generating children), and
``agg_value`` = the attacker's best value of the first child over the variants (``worst_variant`` names it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from evals.metrics.base import UnlearningMetric
from omegaconf import DictConfig, OmegaConf

from duet_plugin.core.attacks.refusal import refusal_rate

logger = logging.getLogger(__name__)

#: Keys OU's evaluator passes to every metric besides its own config.
SHARED_KWARGS = ("tokenizer", "template_args")
#: Dataset handlers whose questions and answers an input attack can rewrite.
QA_HANDLERS = ("QADataset", "AttackQADataset")


@dataclass
class Attack:
    """One attack variant: the model to measure and each child's config to measure it with."""

    variant: str
    model: Any
    children: Mapping[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


def with_attacked_inputs(metric_name: str, children: Mapping[str, Any], **dataset_args: Any) -> dict[str, DictConfig]:
    """The children's configs with every ``QADataset`` swapped for ``AttackQADataset(**dataset_args)``.

    Raises before any compute when a child reads no QA dataset (e.g. an aggregate such as model_utility)."""
    rewritten = {}
    for name, cfg in children.items():
        container = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        datasets = container.get("datasets") or {}
        if not datasets:
            raise ValueError(
                f"{metric_name}: pre_compute metric {name!r} reads no dataset of its own; input attacks re-measure "
                f"metrics over a QADataset (e.g. forget_Q_A_ROUGE, forget_Q_A_Prob, forget_knowmem_ROUGE)."
            )
        for ds_name, ds in datasets.items():
            if ds.get("handler") not in QA_HANDLERS:
                raise ValueError(
                    f"{metric_name}: {name}.datasets.{ds_name} uses {ds.get('handler')!r}; input attacks rewrite "
                    f"questions and answers of {QA_HANDLERS} only."
                )
            ds["handler"] = "AttackQADataset"
            ds.setdefault("args", {}).update(dataset_args)
        rewritten[name] = OmegaConf.create(container)
    return rewritten


class AttackMetric(UnlearningMetric):
    """Subclasses set ``OPTIONS`` (name -> default) and implement :meth:`attacked_models` (model attacks, one copy
    at a time) or :meth:`attacks` (anything else). :meth:`check` validates options before any compute."""

    OPTIONS: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, name: str) -> None:
        super().__init__(name=name, metric_fn=self._unused)

    @staticmethod
    def _unused(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Attack metrics evaluate through AttackMetric.evaluate.")

    def check(self, metric_name: str, children: Mapping[str, Any], **options: Any) -> None:
        """Raise on bad options before anything is computed."""

    def attacked_models(self, model: Any, shared: Mapping[str, Any], **options: Any) -> Iterator[tuple[str, Any, dict]]:
        raise NotImplementedError

    def attacks(
        self, model: Any, metric_name: str, children: Mapping[str, Any], shared: Mapping[str, Any], **options: Any
    ) -> Iterator[Attack]:
        for variant, attacked, info in self.attacked_models(model, shared, **options):
            yield Attack(variant, attacked, children, info)

    def finish(self, result: dict[str, Any], **options: Any) -> None:
        """Add derived figures to the result (e.g. the relearning recovery)."""

    def _measure(
        self, model: Any, children: Mapping[str, Any], shared: Mapping[str, Any], cache: Mapping[str, Any] | None
    ) -> tuple[dict[str, float | None], dict[str, float], str | None]:
        """Each child's ``agg_value``, the refusal rate of its generations (if it generates) and one input it saw."""
        values, refusals, example = {}, {}, None
        for child_name, cfg in children.items():
            child = self.pre_compute_metrics.get(child_name)
            if child is None:
                raise ValueError(f"pre_compute metric {child_name!r} was not instantiated.")
            key = cfg.get("access_key", child_name)
            if cache is not None and child_name in cache:
                result = cache[child_name]
            else:
                result = child.evaluate(model, child_name, cache={}, **shared, **cfg)
            value = result.get("agg_value") if isinstance(result, Mapping) else result
            values[key] = None if value is None else float(value)
            by_index = result.get("value_by_index") if isinstance(result, Mapping) else None
            generations = [
                v["generation"] for v in (by_index or {}).values() if isinstance(v, Mapping) and "generation" in v
            ]
            if generations:
                refusals[key] = refusal_rate(generations)
            first = next(iter((by_index or {}).values()), None)
            if example is None and isinstance(first, Mapping) and "input" in first:
                example = first["input"]
        return values, refusals, example

    def arguments(
        self, metric_name: str, kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], bool, dict[str, Any], dict[str, Any]]:
        """What OU passes, checked before any compute: the children, ``higher_is_worse``, this metric's options
        (defaults filled in; an unknown one is refused) and the evaluator's shared arguments."""
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
        self.check(metric_name, children, **options)
        return children, higher_is_worse, options, {k: kwargs[k] for k in SHARED_KWARGS if k in kwargs}

    def evaluate(self, model: Any, metric_name: str, cache: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        children, higher_is_worse, options, shared = self.arguments(metric_name, kwargs)
        unattacked, unattacked_refusals, _ = self._measure(model, children, shared, cache)
        by_attack: dict[str, dict[str, float | None]] = {}
        refusals: dict[str, dict[str, float]] = {}
        info: dict[str, dict[str, Any]] = {}
        for attack in self.attacks(model, metric_name, children, shared, **options):
            by_attack[attack.variant], refusals[attack.variant], example = self._measure(
                attack.model, attack.children, shared, None
            )
            info[attack.variant] = {**attack.info, **({"example_input": example} if example is not None else {})}
            logger.info("%s %s: %s", metric_name, attack.variant, by_attack[attack.variant])
            del attack
        first = next(iter(children.values())).get("access_key", next(iter(children)))
        scored = {v: r[first] for v, r in by_attack.items() if r.get(first) is not None and not math.isnan(r[first])}
        pick = max if higher_is_worse else min
        worst_variant = pick(scored, key=scored.__getitem__) if scored else None
        out = {
            "agg_value": scored[worst_variant] if worst_variant else None,
            "worst_of": first,
            "worst_variant": worst_variant,
            "unattacked": unattacked,
            "value_by_attack": by_attack,
            "attack_info": info,
        }
        if unattacked_refusals or any(refusals.values()):
            out["unattacked_refusal"] = unattacked_refusals
            out["refusal_by_attack"] = refusals
        self.finish(out, **options)
        cache[metric_name] = out
        return out
