"""``RobustLMEvalEvaluator``: OU's lm-eval evaluation, also run on attacked copies of the model (relearned,
quantized), with the same summary keys per variant and the defender's worst case over them.

Fixes two bugs of OU's ``LMEvalEvaluator`` (lm-eval 0.4.8): ``simple_evaluate_args`` is read from ``eval_cfg`` (OU
reads the constructor kwargs, which ``get_evaluator`` never fills, so it always ran at batch size 1), and every
``simple_evaluate`` call gets its own deep copy of the task (lm-eval's ``TaskManager`` pops ``task`` from dict tasks,
which broke a second evaluation). ``include_path`` hands local task YAML to ``TaskManager``.

Cost: ``1 + len(bits) + len(learning_rates)`` lm-eval passes over the tasks, plus ``len(learning_rates) x steps``
AdamW steps of ``batch_size`` sequences; one model copy alive at a time. The evaluated model is left bit-identical.
Key scheme: see :mod:`duet_plugin.core.attacks.lm_eval_plan`.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from data import get_collators, get_datasets
from evals.lm_eval import LMEvalEvaluator
from lm_eval import simple_evaluate
from lm_eval.models.hf_vlms import HFLM
from lm_eval.tasks import TaskManager
from omegaconf import OmegaConf

from duet_plugin.core.attacks.lm_eval_plan import (
    AttackPlan,
    Variant,
    prefixed,
    relative_weight_change,
    relearn_batches,
    worst_over_variants,
)
from duet_plugin.core.attacks.quantization import DEFAULT_INCLUDE, quantized_copy
from duet_plugin.core.attacks.relearn import Batch, relearn_copy

logger = logging.getLogger("evaluator")

#: simple_evaluate_args that size HFLM's batches: lm-eval ignores them in simple_evaluate for a ready model.
HFLM_ARGS = ("batch_size", "max_batch_size")
#: simple_evaluate's own arguments that the evaluator sets.
RESERVED_ARGS = ("model", "model_args", "tasks", "task_manager")
#: EVAL-log entry with each variant's settings and measurements, the metric directions and the worst-case picks.
ROBUSTNESS_LOG = "robustness"


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


class RobustLMEvalEvaluator(LMEvalEvaluator):
    """OU's ``LMEvalEvaluator`` (same ``LMEval_EVAL.json`` / ``LMEval_SUMMARY.json``) plus ``attacks``."""

    def __init__(self, eval_cfg: Any, **kwargs: Any) -> None:
        # Not super().__init__: it builds a TaskManager (about 16 s) without include_path.
        self.name = "LMEval"
        self.eval_cfg = eval_cfg
        self.tasks = OmegaConf.to_container(eval_cfg.tasks, resolve=True, throw_on_missing=True)
        self.task_names = [self.get_task_name(task) for task in self.tasks]
        self.simple_evaluate_args = self._checked_args(_plain(eval_cfg.get("simple_evaluate_args")) or {})
        self.plan = AttackPlan.from_config(_plain(eval_cfg.get("attacks")))
        forget_tasks = _plain(eval_cfg.get("forget_tasks"))
        self.forget_tasks = [forget_tasks] if isinstance(forget_tasks, str) else forget_tasks
        self.task_manager = TaskManager(include_path=_plain(eval_cfg.get("include_path")))

    @staticmethod
    def _checked_args(args: Mapping[str, Any]) -> dict[str, Any]:
        allowed = set(inspect.signature(simple_evaluate).parameters) - set(RESERVED_ARGS)
        unknown = sorted(set(args) - allowed)
        if unknown:
            raise ValueError(
                f"simple_evaluate_args: {unknown} are not lm_eval.simple_evaluate arguments (or are set by the "
                f"evaluator: {list(RESERVED_ARGS)}); allowed: {sorted(allowed)}."
            )
        return dict(args)

    def prepare_model(self, model: Any, **kwargs: Any) -> HFLM:
        """``model`` in eval mode, wrapped for lm-eval with the configured batch size."""
        model.eval()
        return HFLM(model, **{k: self.simple_evaluate_args[k] for k in HFLM_ARGS if k in self.simple_evaluate_args})

    def evaluate(self, model: Any, output_dir: str | None = None, overwrite: bool | None = None, **kwargs: Any):
        overwrite = self.eval_cfg.overwrite if overwrite is None else overwrite
        output_dir = output_dir or self.eval_cfg.output_dir
        paths = (self.get_logs_file_path(output_dir), self.get_logs_file_path(output_dir, suffix="SUMMARY"))
        logs = self.load_logs_from_file(paths[0]) if not overwrite else {}
        summary = self.load_logs_from_file(paths[1]) if not overwrite else {}
        robustness = logs.setdefault(ROBUSTNESS_LOG, {}) if self.plan.variants else {}
        done = robustness.setdefault("attacks", {})
        directions = robustness.setdefault("higher_is_better", {})
        todo = [v for v in self.plan.variants if not self._cached(v, logs, done.get(v.name))]
        # What can fail on the configuration or the data fails here, before any model is run.
        batches = self._relearn_batches(kwargs) if any(v.attack == "relearn" for v in todo) else []

        logger.info(f"***** Running {self.name} evaluation suite *****")
        logger.info(f"Fine-grained evaluations will be saved to: {paths[0]}")
        logger.info(f"Aggregated evaluations will be summarised in: {paths[1]}")
        self._run_tasks(model, None, logs, summary, paths, overwrite, directions)
        for variant, attacked, info in self._attacked_models(model, todo, batches):
            shown = {k: v for k, v in variant.settings.items() if k != "datasets"}
            logger.info(f"{self.name} attack {variant.name} {shown}: {info}")
            self._run_tasks(attacked, variant.name, logs, summary, paths, True, directions)
            done[variant.name] = {"settings": variant.settings, **info}
            del attacked
            self._save(logs, summary, paths)
        if self.plan.variants:
            base_keys = [k for k in summary if k.rsplit("/", 1)[0] in self.task_names]
            worst, chosen = worst_over_variants(
                summary, base_keys, [v.name for v in self.plan.variants], self.forget_tasks, directions
            )
            summary.update(worst)
            robustness["worst_variant"] = chosen
            logger.info(f"{self.name} worst case over {len(self.plan.variants)} attack variants: {worst}")
            self._save(logs, summary, paths)
        return summary

    def _save(self, logs: dict[str, Any], summary: dict[str, Any], paths: tuple[str, str]) -> None:
        self.save_logs(logs, paths[0])
        self.save_logs(summary, paths[1])

    def _cached(self, variant: Variant, logs: Mapping[str, Any], done: Mapping[str, Any] | None) -> bool:
        """Whether ``variant`` was evaluated on every task with the same settings (then it is not rebuilt)."""
        if not done or done.get("settings") != variant.settings:
            return False
        return all(logs.get(f"{variant.name}/{name}") for name in self.task_names)

    def _run_tasks(
        self,
        model: Any,
        variant: str | None,
        logs: dict[str, Any],
        summary: dict[str, Any],
        paths: tuple[str, str],
        overwrite: bool,
        directions: dict[str, bool],
    ) -> None:
        """OU's per-task loop on ``model``, with keys under ``<variant>/`` when given; the unattacked run also
        records each summary key's ``higher_is_better`` in ``directions``."""
        lm = None
        for task, task_name in zip(self.tasks, self.task_names, strict=True):
            key = f"{variant}/{task_name}" if variant else task_name
            if not overwrite and logs.get(key):
                logger.info(f"Skipping {key}, already evaluated.")
                continue
            if lm is None:
                lm = self.prepare_model(model)
            results = simple_evaluate(
                model=lm, tasks=[copy.deepcopy(task)], task_manager=self.task_manager, **self.simple_evaluate_args
            )
            logs[key] = results["samples"]
            task_summary = self.summarize(results, task_name)
            summary.update(prefixed(task_summary, variant) if variant else task_summary)
            if variant is None:
                hib = results.get("higher_is_better", {}).get(task_name, {})
                for k in task_summary:
                    if k.rsplit("/", 1)[1] in hib:
                        directions[k] = bool(hib[k.rsplit("/", 1)[1]])
            self._save(logs, summary, paths)

    def _relearn_batches(self, kwargs: Mapping[str, Any]) -> list[Batch]:
        relearn = self.plan.relearn
        tokenizer = kwargs.get("tokenizer")
        if tokenizer is None:
            raise ValueError(
                "The relearning attack needs the tokenizer to build its data: call evaluate(..., tokenizer=...) "
                "(OU's eval.py and trainers do), or set attacks.relearn=null."
            )
        # OU reads these as DictConfig (attribute access).
        datasets, collators = OmegaConf.create(relearn.datasets), OmegaConf.create(relearn.collators)
        dataset = get_datasets(datasets, tokenizer=tokenizer, template_args=kwargs.get("template_args"))
        collator = get_collators(collators, tokenizer=tokenizer)
        cfg = relearn.config
        return relearn_batches(dataset, collator, relearn.batch_size, cfg.steps, cfg.seed)

    def _attacked_models(
        self, model: Any, variants: list[Variant], batches: list[Batch]
    ) -> Iterator[tuple[Variant, Any, dict[str, Any]]]:
        """Each variant's attacked copy (made one at a time; ``model`` is never modified) and what was measured."""
        for variant in variants:
            s = variant.settings
            if variant.attack == "quantization":
                attacked, report = quantized_copy(
                    model,
                    s["bits"],
                    include=s["include"] or DEFAULT_INCLUDE,
                    exclude=s["exclude"] or (),
                    group_size=s["group_size"],
                )
                info = {"relative_weight_error": report.relative_error, "quantized_tensors": len(report.names)}
            else:
                attacked = relearn_copy(model, batches, s["lr"], self.plan.relearn.config)
                info = {
                    "relative_weight_change": relative_weight_change(model, attacked),
                    "sequences_trained": sum(len(batches[i % len(batches)]["input_ids"]) for i in range(s["steps"])),
                    "distinct_batches": len(batches),  # fewer than steps: the relearn data was cycled
                }
            yield variant, attacked, info
            del attacked  # before the next copy is made
