"""``directional_ablation`` (white-box probe): estimate a forgetting direction from the model's own activations
(forget prompts against retain prompts), project it out of the residual stream at inference, re-measure the
``pre_compute`` metrics (Łucki et al., arXiv 2409.18025; Arditi et al., 2024). The evaluated model is left
bit-identical (forward hooks, removed afterwards; nothing is copied).

``datasets`` holds two OU QA dataset configs with ``access_key`` ``forget`` (the forget split, the same rows in the
same order as the forget children read, e.g. TOFU's forget10 for forget10_perturbed) and ``retain``; ``collators``
one collator. The forget rows are split, seeded (``partition_seed``; by question, or by concept with
``partition_by: concept``: ``concept_key`` column or blocks of ``concept_size`` rows), into a *fitting* part
(``1 - heldout_fraction``) and a held-out part. The direction is the difference of the fitting part's and the retain
prompts' mean residual streams at ``position`` (``last`` prompt token or ``mean`` over the prompt), per layer; the
layer is ``layer`` or, when null, the one among ``candidate_layers`` (null: every block's output) whose ablation
most raises the fitting part's teacher-forced answer probability. The children are then measured on the whole
model with and without the ablation, and scored on the held-out rows only (the mean of the per-item field whose
mean is their ``agg_value``, as relearn_attack's heldout_facts mode does), so neither the direction nor the layer
was chosen on a scored item. Children named in ``whole_set`` (e.g. retain_Q_A_Prob: what the ablation costs
elsewhere) are scored on all their items.

Result, beside the keys every attack metric writes (``unattacked``, ``value_by_attack.ablated``, ``attack_info``):
``layer`` (and ``layer_chosen``: selected or configured), ``direction`` (the chosen layer's ``norm``,
``relative_norm``, ``separation`` of the fitting forget and retain prompts along it (Cohen's d) and
``heldout_separation`` of the held-out forget prompts), ``value_by_layer`` (every layer's norm, separation and,
for candidates, ``fit_prob_ablated``), ``fit_prob_unablated``, ``fit_part`` (the children on the fitting rows,
before and after: in-sample, for reference), ``partition`` and ``scored_on``. ``agg_value``: the first child's
held-out value with the direction ablated.

Cost: one teacher-forced forward over the forget and retain sets (per item ``(layers + 1) x hidden`` floats kept on
the CPU), one forward over the fitting part per candidate layer (when the layer is chosen: by default
``num_hidden_layers`` of them), and each child twice over its whole dataset (once when OU already computed it
unablated in the same run). No model copy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from torch.utils.data import DataLoader, Subset

from duet_plugin.core.attacks.directional_ablation import (
    POSITIONS,
    choose_layer,
    collect_activations,
    difference_of_means,
    directional_ablation,
    layer_table,
    separation,
)
from duet_plugin.core.attacks.relearn import partition_indices
from duet_plugin.openunlearning.metrics.attack import SHARED_KWARGS, AttackMetric
from duet_plugin.openunlearning.metrics.heldout import check_partition, concept_labels, index_field, subset_mean

logger = logging.getLogger(__name__)

VARIANT = "ablated"


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


class DirectionalAblation(AttackMetric):
    OPTIONS: ClassVar[Mapping[str, Any]] = {
        "datasets": None,
        "collators": None,
        "batch_size": 8,
        "position": "last",
        "layer": None,
        "candidate_layers": None,
        "layers_module": None,
        "heldout_fraction": 0.5,
        "partition_by": "question",
        "partition_seed": 0,
        "concept_key": None,
        "concept_size": 20,
        "whole_set": None,
    }

    def check(self, metric_name: str, children: Mapping[str, Any], **options: Any) -> None:
        if not options["datasets"] or not options["collators"]:
            raise ValueError(
                f"{metric_name}: set datasets (two OU QA configs with access_key forget and retain) and collators "
                f"(the plugin's directional_ablation.yaml reads TOFU_QA_forget and TOFU_QA_retain_eval)."
            )
        if options["position"] not in POSITIONS:
            raise ValueError(f"{metric_name}: position={options['position']!r}; choose one of {POSITIONS}.")
        check_partition(metric_name, options)
        if int(options["batch_size"]) < 1 or int(options["concept_size"]) < 1:
            raise ValueError(f"{metric_name}: batch_size and concept_size must be >= 1.")
        whole = list(options["whole_set"] or [])
        unknown = [w for w in whole if w not in children]
        if unknown:
            raise ValueError(f"{metric_name}: whole_set names {unknown}, not pre_compute metrics ({sorted(children)}).")
        first = next(iter(children))
        if first in whole:
            raise ValueError(
                f"{metric_name}: the first pre_compute metric ({first}) gives agg_value and must be scored on the "
                f"held-out forget rows; list the forget metrics first and only others under whole_set."
            )

    def evaluate(self, model: Any, metric_name: str, cache: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        children = dict(kwargs.pop("pre_compute", None) or {})
        if not children:
            raise ValueError(
                f"{metric_name}: no metric to re-measure. Add one under pre_compute, e.g. "
                f"defaults: [.@pre_compute.forget_Q_A_Prob: forget_Q_A_Prob] (see the plugin's {self.name}.yaml)."
            )
        options = {k: kwargs.pop(k, default) for k, default in self.OPTIONS.items()}
        unknown = sorted(set(kwargs) - set(SHARED_KWARGS) - {"handler"})
        if unknown:
            raise ValueError(f"{metric_name}: unknown option(s) {unknown}; {self.name} takes {sorted(self.OPTIONS)}.")
        self.check(metric_name, children, **options)
        shared = {k: kwargs[k] for k in SHARED_KWARGS if k in kwargs}
        out = self._run(model, metric_name, children, shared, cache, options)
        cache[metric_name] = out
        return out

    def _data(self, metric_name: str, options: Mapping[str, Any], shared: Mapping[str, Any]) -> tuple[Any, Any]:
        data = self.get_datasets(dataset_cfgs=options["datasets"], **shared)
        if not isinstance(data, Mapping) or set(data) != {"forget", "retain"}:
            got = sorted(data) if isinstance(data, Mapping) else "one dataset"
            raise ValueError(
                f"{metric_name}: datasets must be two QA configs with access_key forget and retain, got {got}."
            )
        return data["forget"], data["retain"]

    def _run(
        self,
        model: Any,
        metric_name: str,
        children: Mapping[str, Any],
        shared: Mapping[str, Any],
        cache: Mapping[str, Any] | None,
        options: Mapping[str, Any],
    ) -> dict[str, Any]:
        forget, retain = self._data(metric_name, options, shared)
        collator = self.get_collators(collator_cfgs=options["collators"], **shared)
        if isinstance(collator, Mapping):
            raise ValueError(f"{metric_name}: give one collator, got {sorted(collator)}.")
        by_concept = options["partition_by"] == "concept"
        groups = concept_labels(forget, options["concept_key"], int(options["concept_size"])) if by_concept else None
        fit_idx, heldout_idx = partition_indices(
            len(forget), float(options["heldout_fraction"]), int(options["partition_seed"]), groups
        )
        batch_size, position, where = int(options["batch_size"]), options["position"], options["layers_module"]

        def loader(dataset: Any) -> DataLoader:
            return DataLoader(dataset, batch_size=batch_size, collate_fn=collator)

        # activations: rows of the loaders, in order (the plain collator gives no index)
        acts_forget = collect_activations(model, loader(forget), position, where).values
        acts_retain = collect_activations(model, loader(retain), position, where).values
        directions = difference_of_means(acts_forget[fit_idx], acts_retain)
        fit_loader = loader(Subset(forget, fit_idx))
        choice = None
        if options["layer"] is None:
            choice = choose_layer(model, directions, fit_loader, options["candidate_layers"], where)
            layer = choice.layer
        else:
            layer = int(options["layer"])
            if not 0 <= layer < directions.n_layers or not directions.usable(layer):
                raise ValueError(
                    f"{metric_name}: layer={layer} has no usable direction (layers 0..{directions.n_layers - 1}, "
                    f"norms {[round(float(n), 6) for n in directions.norms]})."
                )
        direction = directions.directions[layer]
        info = {
            "layer": layer,
            "norm": float(directions.norms[layer]),
            "relative_norm": float(directions.relative_norms[layer]),
            "separation": _finite(float(directions.separations[layer])),
            "heldout_separation": _finite(
                separation(acts_forget[heldout_idx, layer], acts_retain[:, layer], direction)
            ),
        }
        logger.info("%s: layer %d (%s), %s", metric_name, layer, "chosen" if choice else "configured", info)
        del acts_forget, acts_retain

        whole = set(options["whole_set"] or [])
        keys = {name: cfg.get("access_key", name) for name, cfg in children.items()}
        fields: dict[str, str] = {}

        def measure(m: Any, use_cache: Mapping[str, Any] | None) -> tuple[dict[str, float | None], dict]:
            scores: dict[str, float | None] = {}
            fit_scores: dict[str, float | None] = {}
            for name, cfg in children.items():
                result = self._child(m, name, cfg, shared, use_cache)
                key = keys[name]
                if name in whole:
                    scores[key] = _number(result.get("agg_value") if isinstance(result, Mapping) else result)
                    continue
                by_index = result.get("value_by_index") if isinstance(result, Mapping) else None
                if key not in fields:
                    fields[key] = self._field(metric_name, name, result)
                    self._check_rows(metric_name, name, by_index, len(forget))
                scores[key] = subset_mean(by_index, fields[key], heldout_idx)
                fit_scores[key] = subset_mean(by_index, fields[key], fit_idx)
            return scores, fit_scores

        before, fit_before = measure(model, cache)
        with directional_ablation(model, direction, where):
            after, fit_after = measure(model, None)
        logger.info("%s: held-out before %s, ablated %s", metric_name, before, after)
        first = keys[next(iter(children))]
        return {
            "agg_value": after[first],
            "worst_of": first,
            "worst_variant": VARIANT,
            "unattacked": before,
            "value_by_attack": {VARIANT: after},
            "attack_info": {VARIANT: {**info, "position": position}},
            "layer": layer,
            "layer_chosen": choice is not None,
            "direction": info,
            "position": position,
            "value_by_layer": layer_table(directions, choice),
            "fit_prob_unablated": choice.unablated if choice else None,
            "fit_part": {"unattacked": fit_before, VARIANT: fit_after},
            "scored_on": {keys[n]: ("all" if n in whole else "heldout") for n in children},
            "partition": {
                "by": options["partition_by"],
                "seed": int(options["partition_seed"]),
                "fit": fit_idx,
                "heldout": heldout_idx,
            },
            "n_forget": len(forget),
            "n_retain": len(retain),
        }

    def _child(self, model: Any, name: str, cfg: Any, shared: Mapping[str, Any], cache: Mapping[str, Any] | None):
        child = self.pre_compute_metrics.get(name)
        if child is None:
            raise ValueError(f"pre_compute metric {name!r} was not instantiated.")
        if cache is not None and name in cache:
            return cache[name]
        return child.evaluate(model, name, cache={}, **shared, **cfg)

    @staticmethod
    def _field(metric_name: str, child: str, result: Any) -> str:
        try:
            return index_field(child, result if isinstance(result, Mapping) else {})
        except ValueError:
            raise ValueError(
                f"{metric_name}: pre_compute metric {child!r} has no per-item field in value_by_index whose mean is "
                f"its agg_value, so its held-out rows cannot be scored; use per-item forget metrics (forget_Q_A_Prob, "
                f"forget_Q_A_ROUGE, forget_knowmem_ROUGE), or list it under whole_set."
            ) from None

    @staticmethod
    def _check_rows(metric_name: str, child: str, by_index: Mapping[Any, Any] | None, n: int) -> None:
        indices = {int(k) for k in (by_index or {})}
        if indices != set(range(n)):
            raise ValueError(
                f"{metric_name}: pre_compute metric {child!r} scores {len(indices)} items and the forget dataset has "
                f"{n} rows; held-out scoring needs a child over the forget rows in the same order (e.g. forget10 and "
                f"forget10_perturbed). A metric over another set (retain, ...) goes under whole_set."
            )


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value  # JSON has no NaN


directional_ablation_metric = DirectionalAblation("directional_ablation")
