"""``relearn_attack``: fine-tune a copy of the model on a relearn split, measure the ``pre_compute`` metrics along
the way (step checkpoints), per learning rate and seed. The evaluated model is left bit-identical.

Modes (``mode``):

* ``same`` (default, the original attack): relearn on ``datasets`` (the forget split) and score the children on
  their own sets, i.e. on the very items relearned. Measures how fast the items are (re)memorised: a model that
  never saw them also scores high after a few steps, so read it against ``reference`` (the retain-only model).
* ``heldout_facts``: split the relearn dataset, seeded (``partition_seed``), into a relearned part and a disjoint
  held-out part (``heldout_fraction``), by question or by concept (``partition_by: concept``: whole authors, from
  the ``concept_key`` column or blocks of ``concept_size`` consecutive rows, TOFU's 20 questions per author);
  relearn on the first, score only the second (Deeb & Roger, arXiv 2410.08827). Knowledge the relearned part
  cannot teach that comes back was still in the model. Scoring: each child runs on its whole dataset (the
  relearned part too, reported as ``curve_relearned``), and its held-out value is the mean, over the held-out
  indices, of the per-item field of its ``value_by_index`` whose mean over all items reproduces its ``agg_value``
  (``prob`` for OU's probability, the ``rouge_type`` for rouge); a child without such a field, or whose items do
  not match the relearn dataset's rows one to one, is refused. The children must read the same rows, in the same
  order, as the relearn dataset (TOFU: forget10 and forget10_perturbed do).
* ``related``: relearn on ``related_datasets`` (OU dataset configs over related text or QA, not the scored items),
  score the children on their whole sets.

Each (lr, seed) is one run of ``max(eval_at_steps)`` steps (``steps`` without ``eval_at_steps``), measured at every
checkpoint on the way; step 0 is the unattacked model (not recomputed). Result, beside the keys every attack
metric writes (``value_by_attack`` holds the mean over seeds, variants ``lr{lr}`` for the last checkpoint and
``lr{lr}_step{s}`` for earlier ones): ``curve[child][lr]`` (``steps``, ``mean``/``std``/``min``/``max`` over seeds,
``by_seed``), ``worst`` (the attacker's best (lr, step) by the seed mean, with its spread), ``recovery_curve`` and
``recovery`` against ``original_logs_path`` (the original model's EVAL.json; held-out indices only in
``heldout_facts``), and with ``reference_logs_path`` (the retain-only model's EVAL.json holding this metric, run
with the same settings) or ``reference_model_path`` (the retain-only model: the same attack runs on it here)
``reference`` and ``above_reference`` (attacked minus the reference's, per checkpoint, and at the worst point).

Cost: ``len(learning_rates) x len(seeds) x max(eval_at_steps)`` optimiser steps at ``batch_size`` (one model copy
with AdamW state alive at a time), plus the children ``len(learning_rates) x len(seeds) x`` (positive checkpoints)
times, each over its whole dataset; ``reference_model_path`` doubles all of it and holds the reference model in
memory too. Defaults (2 lrs x 1 seed x 10 steps x 8, scored once per run) finish on a small model on a CPU in
minutes; UNDO's paper-scale attack is ``steps: 500`` over ``learning_rates: [2.15e-5, 1e-5, 4.62e-6]``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from duet_plugin.core.attacks.refusal import refusal_rate
from duet_plugin.core.attacks.relearn import (
    RelearnConfig,
    curve_summary,
    partition_indices,
    recovery,
    relearn_curves,
    worst_point,
)
from duet_plugin.openunlearning.metrics.attack import AttackMetric
from duet_plugin.openunlearning.metrics.heldout import check_partition, concept_labels, index_field, subset_mean

logger = logging.getLogger(__name__)

MODES = ("same", "heldout_facts", "related")


def _lr(lr: float) -> str:
    return f"lr{lr:g}"


def _as_dataset(data: Any) -> Dataset:
    return ConcatDataset(list(data.values())) if isinstance(data, Mapping) else data


class RelearnAttack(AttackMetric):
    OPTIONS: ClassVar[Mapping[str, Any]] = {
        "datasets": None,
        "collators": None,
        "batch_size": 8,
        "steps": 10,
        "learning_rates": (1e-4, 1e-3),
        "max_grad_norm": 1.0,
        "seed": 0,
        "original_logs_path": None,
        "mode": "same",
        "eval_at_steps": None,
        "seeds": None,
        "partition_by": "question",
        "heldout_fraction": 0.5,
        "partition_seed": 0,
        "concept_key": None,
        "concept_size": 20,
        "related_datasets": None,
        "reference_logs_path": None,
        "reference_model_path": None,
    }

    @staticmethod
    def config(options: Mapping[str, Any]) -> RelearnConfig:
        def listed(value: Any) -> list | None:
            if value is None:
                return None
            return [value] if isinstance(value, int | float | str) else list(value)

        return RelearnConfig(
            steps=int(options["steps"]),
            learning_rates=listed(options["learning_rates"]),
            max_grad_norm=float(options["max_grad_norm"]),
            seed=int(options["seed"]),
            eval_at_steps=listed(options["eval_at_steps"]),
            seeds=listed(options["seeds"]),
        )

    def check(self, metric_name: str, children: Mapping[str, Any], **options: Any) -> None:
        cfg = self.config(options)
        if len({_lr(lr) for lr in cfg.learning_rates}) != len(cfg.learning_rates):
            raise ValueError(f"{metric_name}: learning_rates has duplicates: {cfg.learning_rates}.")
        mode = options["mode"]
        if mode not in MODES:
            raise ValueError(f"{metric_name}: mode={mode!r}; choose one of {MODES}.")
        if mode == "related" and not options["related_datasets"]:
            raise ValueError(
                f"{metric_name}: mode=related relearns on related_datasets (OU dataset configs over related text or "
                f"QA, not the scored items); set it, or use mode=same / heldout_facts."
            )
        if not options["collators"] or (mode != "related" and not options["datasets"]):
            raise ValueError(
                f"{metric_name}: no relearn split. Set datasets and collators (the plugin's relearn_attack.yaml "
                f"relearns on the forget split: TOFU_QA_forget with DataCollatorForSupervisedDataset)."
            )
        check_partition(metric_name, options)
        if int(options["concept_size"]) < 1:
            raise ValueError(f"{metric_name}: concept_size must be >= 1, got {options['concept_size']}.")
        if int(options["batch_size"]) < 1:
            raise ValueError(f"{metric_name}: batch_size must be >= 1, got {options['batch_size']}.")
        for key, what in (
            ("original_logs_path", "the EVAL.json that OU's eval.py wrote for the model before unlearning"),
            ("reference_logs_path", f"the EVAL.json of the retain-only model with this {metric_name} in it"),
        ):
            path = options[key]
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{metric_name}: {key}={path} is not a file; point it at {what}, or set it to null.")
        if options["reference_logs_path"] is not None and options["reference_model_path"] is not None:
            raise ValueError(f"{metric_name}: set reference_logs_path or reference_model_path, not both.")
        path = options["reference_model_path"]
        if path is not None and not Path(path).is_dir():
            raise ValueError(f"{metric_name}: reference_model_path={path} is not a model folder (the retain model).")

    # -- the run ---------------------------------------------------------------------------------------------

    def evaluate(self, model: Any, metric_name: str, cache: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        children, higher_is_worse, options, shared = self.arguments(metric_name, kwargs)
        reference_logs = self._reference_logs(metric_name, options)
        if reference_logs is not None:  # before any compute: settings that do not need the data
            self._check_reference(metric_name, self._settings(options), reference_logs, options["reference_logs_path"])
        out = self._attack(model, metric_name, children, shared, cache, options, higher_is_worse)
        self.finish(out, **options)
        if reference_logs is not None:
            self._check_reference(metric_name, out, reference_logs, options["reference_logs_path"])
            self._compare(out, reference_logs, options["reference_logs_path"])
        elif options["reference_model_path"] is not None:
            reference = self._load_reference_model(options["reference_model_path"], model)
            ref = self._attack(reference, metric_name, children, shared, None, options, higher_is_worse)
            del reference
            self._compare(out, ref, options["reference_model_path"])
        cache[metric_name] = out
        return out

    def _data(self, options: Mapping[str, Any], shared: Mapping[str, Any]) -> Any:
        cfgs = options["related_datasets"] if options["mode"] == "related" else options["datasets"]
        return self.get_datasets(dataset_cfgs=cfgs, **shared)

    def _attack(
        self,
        model: Any,
        metric_name: str,
        children: Mapping[str, Any],
        shared: Mapping[str, Any],
        cache: Mapping[str, Any] | None,
        options: Mapping[str, Any],
        higher_is_worse: bool,
    ) -> dict[str, Any]:
        cfg = self.config(options)
        mode = options["mode"]
        raw = self._data(options, shared)
        data = _as_dataset(raw)
        partition = None
        train_data: Dataset = data
        if mode == "heldout_facts":
            by_concept = options["partition_by"] == "concept"
            groups = concept_labels(raw, options["concept_key"], int(options["concept_size"])) if by_concept else None
            relearn_idx, heldout_idx = partition_indices(
                len(data), float(options["heldout_fraction"]), int(options["partition_seed"]), groups
            )
            partition = {
                "by": options["partition_by"],
                "seed": int(options["partition_seed"]),
                "relearn": relearn_idx,
                "heldout": heldout_idx,
                **({"concepts_heldout": sorted({groups[i] for i in heldout_idx})} if groups else {}),
            }
            train_data = Subset(data, relearn_idx)
        collator = self.get_collators(collator_cfgs=options["collators"], **shared)
        batch_size = int(options["batch_size"])

        def batches(seed: int) -> list:
            loader = DataLoader(
                train_data, batch_size=batch_size, shuffle=True, collate_fn=collator,
                generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
            return list(islice(loader, cfg.total_steps))  # the run cycles through them when the data is shorter

        keys = {name: c.get("access_key", name) for name, c in children.items()}
        fields: dict[str, str] = {}
        example: list[str] = []

        def measure(m: Any, cache: Mapping[str, Any] | None = None) -> dict[str, float | None]:
            """Each child's score (held-out part in heldout_facts), plus ``relearned:<child>`` (the relearned
            part) and ``refusal:<child>`` (refusal rate of its scored generations) where they apply."""
            scores: dict[str, float | None] = {}
            for name, child_cfg in children.items():
                key = keys[name]
                result = self._child(m, name, child_cfg, shared, cache)
                by_index = (result.get("value_by_index") if isinstance(result, Mapping) else None) or {}
                if partition is None:
                    value = result.get("agg_value") if isinstance(result, Mapping) else result
                    scores[key] = None if value is None else float(value)
                    scored = list(by_index.values())
                else:
                    if key not in fields:
                        fields[key] = index_field(name, result)
                        self._check_rows(metric_name, name, by_index, len(data))
                    scores[key] = subset_mean(by_index, fields[key], partition["heldout"])
                    scores[f"relearned:{key}"] = subset_mean(by_index, fields[key], partition["relearn"])
                    items = {int(k): v for k, v in by_index.items()}
                    scored = [items.get(i) for i in partition["heldout"]]
                generations = [v["generation"] for v in scored if isinstance(v, Mapping) and "generation" in v]
                if generations:
                    scores[f"refusal:{key}"] = refusal_rate(generations)
                inputs = [v["input"] for v in scored if isinstance(v, Mapping) and "input" in v]
                if not example and inputs:
                    example.append(inputs[0])
            return scores

        unattacked = measure(model, cache)
        runs = relearn_curves(model, batches, measure, cfg, unattacked=unattacked)
        for lr, by_seed in runs.items():
            for seed, curve in by_seed.items():
                by_step = {step: {k: curve[i][k] for k in keys.values()} for i, step in enumerate(cfg.checkpoints)}
                logger.info("%s %s seed %d: %s", metric_name, _lr(lr), seed, by_step)
        return self._result(
            cfg, options, runs, unattacked, partition, fields, len(data), len(train_data),
            example[0] if example else None, higher_is_worse, list(keys.values()),
        )  # fmt: skip

    def _child(self, model: Any, name: str, cfg: Any, shared: Mapping[str, Any], cache: Mapping[str, Any] | None):
        child = self.pre_compute_metrics.get(name)
        if child is None:
            raise ValueError(f"pre_compute metric {name!r} was not instantiated.")
        if cache is not None and name in cache:
            return cache[name]
        return child.evaluate(model, name, cache={}, **shared, **cfg)

    @staticmethod
    def _check_rows(metric_name: str, child: str, by_index: Mapping[Any, Any] | None, n: int) -> None:
        indices = {int(k) for k in (by_index or {})}
        if indices != set(range(n)):
            raise ValueError(
                f"{metric_name}: mode=heldout_facts, but pre_compute metric {child!r} scores {len(indices)} items "
                f"(indices {min(indices, default=None)}..{max(indices, default=None)}) and the relearn dataset has "
                f"{n} rows; the children must read the relearn dataset's rows, in its order (e.g. both the forget "
                f"split), so that held-out indices name the same facts."
            )

    def _result(
        self,
        cfg: RelearnConfig,
        options: Mapping[str, Any],
        runs: Mapping[float, Mapping[int, list]],
        unattacked: Mapping[str, float | None],
        partition: Mapping[str, Any] | None,
        fields: Mapping[str, str],
        n_items: int,
        n_train: int,
        example: str | None,
        higher_is_worse: bool,
        order: Sequence[str],
    ) -> dict[str, Any]:
        first, steps = order[0], cfg.checkpoints

        def curves(prefix: str = "") -> dict[str, dict[str, dict[str, Any]]]:
            return {
                k: {_lr(lr): c for lr, c in curve_summary(runs, steps, prefix + k).items()}
                for k in order
                if any(prefix + k in p for r in runs.values() for run in r.values() for p in run)
            }

        curve, refusal_curve = curves(), curves("refusal:")
        by_attack, refusals, info = {}, {}, {}
        for lr in cfg.learning_rates:
            for i, step in enumerate(steps):
                if step == 0:
                    continue
                variant = _lr(lr) if step == steps[-1] else f"{_lr(lr)}_step{step}"
                by_attack[variant] = {k: curve[k][_lr(lr)]["mean"][i] for k in order}
                if refusal_curve:
                    refusals[variant] = {k: c[_lr(lr)]["mean"][i] for k, c in refusal_curve.items()}
                info[variant] = {
                    "lr": lr, "steps": step, "batch_size": int(options["batch_size"]), "examples": n_train,
                    "seeds": cfg.run_seeds, **({"example_input": example} if example is not None else {}),
                }  # fmt: skip
        scored = {v: r[first] for v, r in by_attack.items() if r.get(first) is not None and not math.isnan(r[first])}
        pick = max if higher_is_worse else min
        worst_variant = pick(scored, key=scored.__getitem__) if scored else None
        worst = worst_point(curve_summary(runs, steps, first), higher_is_worse)
        if worst is not None:
            worst = {**worst, "variant": worst_variant, "n_seeds": len(cfg.run_seeds)}
        out: dict[str, Any] = {
            "agg_value": scored[worst_variant] if worst_variant else None,
            "worst_of": first,
            "worst_variant": worst_variant,
            "unattacked": {k: unattacked.get(k) for k in order},
            "value_by_attack": by_attack,
            "attack_info": info,
            "mode": options["mode"],
            "scored_on": "heldout" if partition else "all",
            "settings": {
                "learning_rates": cfg.learning_rates,
                "eval_at_steps": steps,
                "seeds": cfg.run_seeds,
                "batch_size": int(options["batch_size"]),
                "max_grad_norm": cfg.max_grad_norm,
                "relearn_examples": n_train,
                "dataset_rows": n_items,
            },
            "curve": curve,
            "worst": worst,
        }
        if partition is not None:
            out["partition"] = dict(partition)
            out["index_field"] = dict(fields)
            out["unattacked_relearned"] = {k: unattacked.get(f"relearned:{k}") for k in order}
            out["curve_relearned"] = curves("relearned:")
        if refusal_curve:
            out["unattacked_refusal"] = {k: unattacked.get(f"refusal:{k}") for k in refusal_curve}
            out["refusal_by_attack"] = refusals
        return out

    # -- original model, reference model ------------------------------------------------------------------------

    def finish(self, result: dict[str, Any], original_logs_path: str | None = None, **options: Any) -> None:
        if original_logs_path is None:
            return
        logs = json.loads(Path(original_logs_path).read_text())
        partition = result.get("partition")
        original: dict[str, float | None] = {}
        for key in result["unattacked"]:
            entry = logs.get(key) or {}
            if partition is None:
                original[key] = entry.get("agg_value")
            elif entry.get("value_by_index"):
                original[key] = subset_mean(entry["value_by_index"], result["index_field"][key], partition["heldout"])
            else:  # the held-out part of the original model's score is unknown: no recovery rather than a wrong one
                original[key] = None
                logger.warning("%s: %s has no value_by_index, no held-out recovery for it.", original_logs_path, key)
        result["original"] = original
        unattacked = result["unattacked"]

        def rec(after: float | None, key: str) -> float | None:
            if None in (after, unattacked[key], original[key]):
                return None
            return recovery(after, unattacked[key], original[key])

        result["recovery_by_attack"] = {
            variant: {key: rec(after, key) for key, after in values.items()}
            for variant, values in result["value_by_attack"].items()
        }
        result["recovery_curve"] = {
            key: {lr: [rec(m, key) for m in c["mean"]] for lr, c in curves.items()}
            for key, curves in result["curve"].items()
        }
        worst = result["worst_variant"]
        result["recovery"] = result["recovery_by_attack"][worst][result["worst_of"]] if worst else None

    def _reference_logs(self, metric_name: str, options: Mapping[str, Any]) -> dict[str, Any] | None:
        path = options["reference_logs_path"]
        if path is None:
            return None
        logs = json.loads(Path(path).read_text())
        entry = logs.get(metric_name)
        if not isinstance(entry, Mapping) or "curve" not in entry:
            found = sorted(k for k, v in logs.items() if isinstance(v, Mapping) and "curve" in v)
            raise ValueError(
                f"{metric_name}: reference_logs_path={path} holds no {metric_name} result with a curve (found: "
                f"{found}); run OU's eval.py on the retain-only model with the same {metric_name} settings first."
            )
        return dict(entry)

    def _settings(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """What a reference run must share with this one, as far as known before the data is read."""
        cfg = self.config(options)
        settings = {
            "learning_rates": cfg.learning_rates,
            "eval_at_steps": cfg.checkpoints,
            "seeds": cfg.run_seeds,
            "batch_size": int(options["batch_size"]),
        }
        return {"mode": options["mode"], "settings": settings}

    @staticmethod
    def _check_reference(metric_name: str, out: Mapping[str, Any], ref: Mapping[str, Any], path: str) -> None:
        mine, theirs = out["settings"], ref.get("settings") or {}
        keys = ("learning_rates", "eval_at_steps", "seeds", "batch_size")
        differ = [k for k in keys if mine.get(k) != theirs.get(k)]
        if out.get("mode") != ref.get("mode"):
            differ.append("mode")
        heldout = [(x.get("partition") or {}).get("heldout") for x in (out, ref)]
        if "curve" in out and heldout[0] != heldout[1]:  # the partition is known once the data is read
            differ.append("partition")
        if differ:
            raise ValueError(
                f"{metric_name}: the reference at {path} was attacked with other settings ({differ}); the floor "
                f"must come from the same attack: rerun it on the retain-only model with this configuration."
            )

    @staticmethod
    def _compare(out: dict[str, Any], ref: Mapping[str, Any], source: str) -> None:
        """``reference``: the retain-only model's numbers under the same attack; ``above_reference``: ours minus
        theirs at the worst point and along the curve (knowledge beyond the memorisation floor)."""
        out["reference"] = {
            "source": str(source),
            "agg_value": ref.get("agg_value"),
            "unattacked": ref.get("unattacked"),
            "worst": ref.get("worst"),
            "curve": {
                key: {lr: c.get("mean") for lr, c in curves.items()} for key, curves in (ref.get("curve") or {}).items()
            },
        }
        mine, theirs = out.get("agg_value"), ref.get("agg_value")
        out["above_reference"] = None if None in (mine, theirs) else mine - theirs
        curves = {}
        for key, by_lr in out["curve"].items():
            for lr, c in by_lr.items():
                other = ((ref.get("curve") or {}).get(key) or {}).get(lr)
                if other is None:
                    continue
                curves.setdefault(key, {})[lr] = [
                    None if None in (a, b) else a - b for a, b in zip(c["mean"], other["mean"], strict=False)
                ]
        out["above_reference_curve"] = curves

    @staticmethod
    def _load_reference_model(path: str, like: Any) -> Any:
        from transformers import AutoModelForCausalLM

        param = next(like.parameters())
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=param.dtype)
        return model.to(param.device).eval()


relearn_attack = RelearnAttack("relearn_attack")
