"""``embedding_attack`` (white-box, with its control): optimise ``k`` soft-prompt vectors on a fitting part of the
forget set, score the held-out part's teacher-forced answer probability with and without them, and run the same
attack on never-trained facts (TOFU's holdout split). A soft prompt can raise the probability of facts a model never
saw (Chen et al., arXiv 2502.15836), so the headline (``agg_value``) is the *margin*: the forget gain minus the
control gain. A margin near 0: the attack elicits no more from the forget set than from facts that were never there;
a large margin: the forget answers are hidden, not removed.

``datasets`` holds two OU QA dataset configs with ``access_key`` ``forget`` (e.g. TOFU's forget10) and ``control``
(never-trained facts, e.g. TOFU's holdout10); ``collators`` one collator. Each set is split, seeded
(``partition_seed``; by question, or by concept with ``partition_by: concept``: ``concept_key`` column or blocks of
``concept_size`` rows, TOFU's 20 per author) into a fitting part (``1 - heldout_fraction``) and a held-out part
(:func:`duet_plugin.core.attacks.relearn.partition_indices`). A prompt of ``k`` vectors (``init: random`` at the
embedding matrix's scale, or ``phrase``: the embeddings of ``init_phrase``'s tokens) is inserted at position
``insert_at`` of every input (0: prepended before everything, chat template included; 1: after the first token, e.g.
BOS) and fitted with Adam (``lr``, ``steps``, gradient norm clipped to ``max_grad_norm``) on the fitting part's
answer NLL, one batch per step; the held-out part is then scored (OU's ``probability``: the mean over items of
exp(-mean answer-token NLL)). The forget and control sets get their own prompts with the same settings. ``seeds``
(a list) repeats the fits per seed (the random init and the fitting rows' order); the reported after/gain/margin
are means over the seeds and ``by_seed`` holds each seed's values.

The evaluated model is left bit-identical: its parameters are frozen during the fits (``requires_grad`` False, then
restored, as is its train/eval mode) and only the prompt tensor is optimised; nothing is copied.

Result: ``agg_value`` = ``margin``, ``forget`` and ``control`` (``before``, ``after``, ``gain`` on the held-out
part, ``fit_loss_first``/``fit_loss_last``), ``by_seed`` (when ``seeds`` is set), ``k``, ``steps``, ``lr``, ``init``,
``insert_at``, ``seeds``, ``partition`` (per set: ``fit`` and ``heldout`` indices) and ``n_forget``/``n_control``.

Cost: per seed, two prompt fits of ``steps`` forward+backward passes of one batch each (``batch_size`` rows and
``k`` extra positions; activation memory as for fine-tuning one batch, but no parameter gradients or optimiser
state), and one teacher-forced forward over each held-out part with the prompt; plus one forward over each held-out
part without it (once, shared by the seeds). E.g. TOFU forget10/holdout10, one seed, ``steps=100``: 200 training
passes and ~4 forwards over 200 questions.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any, ClassVar

from evals.metrics.base import UnlearningMetric
from torch.utils.data import DataLoader, Subset

from duet_plugin.core.attacks.embedding_attack import (
    INITS,
    SoftPromptConfig,
    answer_probability,
    margin,
    soft_prompt_attack,
)
from duet_plugin.core.attacks.relearn import partition_indices
from duet_plugin.openunlearning.metrics.attack import SHARED_KWARGS
from duet_plugin.openunlearning.metrics.heldout import check_partition, concept_labels

logger = logging.getLogger(__name__)

SETS = ("forget", "control")


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


class EmbeddingAttack(UnlearningMetric):
    OPTIONS: ClassVar[Mapping[str, Any]] = {
        "datasets": None,
        "collators": None,
        "batch_size": 8,
        "k": 20,
        "steps": 100,
        "lr": 1e-3,
        "init": "random",
        "init_phrase": None,
        "insert_at": 0,
        "max_grad_norm": 1.0,
        "seed": 0,
        "seeds": None,
        "heldout_fraction": 0.5,
        "partition_by": "question",
        "partition_seed": 0,
        "concept_key": None,
        "concept_size": 20,
    }

    def __init__(self, name: str) -> None:
        super().__init__(name=name, metric_fn=self._unused)

    @staticmethod
    def _unused(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("embedding_attack evaluates through EmbeddingAttack.evaluate.")

    def check(self, metric_name: str, options: Mapping[str, Any]) -> None:
        if not options["datasets"] or not options["collators"]:
            raise ValueError(
                f"{metric_name}: set datasets (two OU QA configs with access_key forget and control) and collators "
                f"(the plugin's embedding_attack.yaml reads TOFU's forget split and its holdout split)."
            )
        check_partition(metric_name, options)
        if int(options["batch_size"]) < 1 or int(options["concept_size"]) < 1:
            raise ValueError(f"{metric_name}: batch_size and concept_size must be >= 1.")
        if options["init"] not in INITS:
            raise ValueError(f"{metric_name}: init={options['init']!r}; choose one of {INITS}.")
        if options["init"] == "phrase" and not options["init_phrase"]:
            raise ValueError(f"{metric_name}: init=phrase needs init_phrase (a neutral text, e.g. 'Please answer.').")
        seeds = options["seeds"]
        if seeds is not None and (not list(seeds) or len(set(seeds)) != len(list(seeds))):
            raise ValueError(f"{metric_name}: seeds must be a non-empty list without duplicates, got {seeds}.")

    def evaluate(self, model: Any, metric_name: str, cache: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        kwargs.pop("pre_compute", None)
        options = {k: kwargs.pop(k, default) for k, default in self.OPTIONS.items()}
        unknown = sorted(set(kwargs) - set(SHARED_KWARGS) - {"handler"})
        if unknown:
            raise ValueError(f"{metric_name}: unknown option(s) {unknown}; {self.name} takes {sorted(self.OPTIONS)}.")
        self.check(metric_name, options)
        shared = {k: kwargs[k] for k in SHARED_KWARGS if k in kwargs}
        out = self._run(model, metric_name, shared, options)
        cache[metric_name] = out
        return out

    def _run(
        self, model: Any, metric_name: str, shared: Mapping[str, Any], options: Mapping[str, Any]
    ) -> dict[str, Any]:
        data = self.get_datasets(dataset_cfgs=options["datasets"], **shared)
        if not isinstance(data, Mapping) or set(data) != set(SETS):
            got = sorted(data) if isinstance(data, Mapping) else "one dataset"
            raise ValueError(
                f"{metric_name}: datasets must be two QA configs with access_key forget and control (never-trained "
                f"facts, e.g. TOFU's holdout split), got {got}."
            )
        collator = self.get_collators(collator_cfgs=options["collators"], **shared)
        if isinstance(collator, Mapping):
            raise ValueError(f"{metric_name}: give one collator, got {sorted(collator)}.")
        batch_size = int(options["batch_size"])

        def batches(dataset: Any, indices: list[int]) -> list[Any]:
            return list(DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=collator))

        init_ids = None
        if options["init"] == "phrase":
            tokenizer = shared.get("tokenizer")
            if tokenizer is None:
                raise ValueError(f"{metric_name}: init=phrase needs the tokenizer OU passes to metrics.")
            init_ids = tokenizer(str(options["init_phrase"]), add_special_tokens=False)["input_ids"]
        seeds = [int(s) for s in options["seeds"]] if options["seeds"] is not None else [int(options["seed"])]
        by_concept = options["partition_by"] == "concept"
        partition: dict[str, dict[str, list[int]]] = {}
        per_seed: dict[int, dict[str, dict[str, Any]]] = {s: {} for s in seeds}
        before: dict[str, float | None] = {}
        for name in SETS:
            dataset = data[name]
            groups = (
                concept_labels(dataset, options["concept_key"], int(options["concept_size"])) if by_concept else None
            )
            fit_idx, held_idx = partition_indices(
                len(dataset), float(options["heldout_fraction"]), int(options["partition_seed"]), groups
            )
            partition[name] = {"fit": fit_idx, "heldout": held_idx}
            held = batches(dataset, held_idx)
            plain = answer_probability(model, held)
            for seed in seeds:
                order = list(fit_idx)
                random.Random(seed).shuffle(order)
                cfg = SoftPromptConfig(
                    k=int(options["k"]),
                    steps=int(options["steps"]),
                    lr=float(options["lr"]),
                    init=options["init"],
                    seed=seed,
                    insert_at=int(options["insert_at"]),
                    max_grad_norm=None if options["max_grad_norm"] is None else float(options["max_grad_norm"]),
                    init_ids=init_ids,
                )
                result = soft_prompt_attack(model, batches(dataset, order), held, cfg, before=plain)
                before[name] = result["before"]
                per_seed[seed][name] = {
                    k: result[k] for k in ("after", "gain", "fit_loss_first", "fit_loss_last", "prompt_norm")
                }
                logger.info("%s %s seed %d: %s", metric_name, name, seed, {"before": result["before"], **result})
        by_seed = {
            str(s): {
                **{f"{n}_{k}": v[n][k] for n in SETS for k in ("after", "gain")},
                "margin": margin(v["forget"]["gain"], v["control"]["gain"]),
            }
            for s, v in per_seed.items()
        }
        summary = {
            name: {
                "before": before[name],
                **{
                    k: _mean([per_seed[s][name][k] for s in seeds])
                    for k in ("after", "gain", "fit_loss_first", "fit_loss_last", "prompt_norm")
                },
            }
            for name in SETS
        }
        headline = _mean([row["margin"] for row in by_seed.values()])
        logger.info(
            "%s: margin %s (forget %s, control %s)", metric_name, headline, summary["forget"], summary["control"]
        )
        return {
            "agg_value": headline,
            "margin": headline,
            "forget": summary["forget"],
            "control": summary["control"],
            "by_seed": by_seed if options["seeds"] is not None else None,
            "k": int(options["k"]),
            "steps": int(options["steps"]),
            "lr": float(options["lr"]),
            "init": options["init"],
            "insert_at": int(options["insert_at"]),
            "seeds": seeds,
            "partition": {"by": options["partition_by"], "seed": int(options["partition_seed"]), **partition},
            "n_forget": len(data["forget"]),
            "n_control": len(data["control"]),
        }


embedding_attack = EmbeddingAttack("embedding_attack")
