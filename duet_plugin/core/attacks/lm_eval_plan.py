"""The framework-free half of the OU adapter ``RobustLMEvalEvaluator``: its ``attacks`` block checked before any
compute, the relearn batches, and the summary key scheme.

Summary keys: the unattacked model's keys as OU writes them (``wmdp_cyber/acc``), each attacked copy's under its
variant (``relearn_lr1e-05/wmdp_cyber/acc``, ``int4/wmdp_cyber/acc``), and the defender's worst case over the
variants (``worst/wmdp_cyber/acc``): the highest score on a forget task (knowledge came back), the lowest on any
other task (utility was lost), flipped for metrics where lower is better. A ``<metric>_stderr`` key follows the
variant picked for its metric.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from duet_plugin.core.attacks.quantization import BNB_SCHEMES, check_scheme
from duet_plugin.core.attacks.relearn import Batch, RelearnConfig, worst_case

WORST = "worst"
STDERR_SUFFIX = "_stderr"

#: The options each attack takes (defaults: ``RelearnConfig``'s, batch_size 8, bits [8, 4]; data has none).
ATTACK_OPTIONS: dict[str, tuple[str, ...]] = {
    "relearn": ("steps", "learning_rates", "batch_size", "max_grad_norm", "seed", "datasets", "collators"),
    "quantization": ("bits", "group_size", "include", "exclude"),
}


@dataclass(frozen=True)
class Variant:
    """One attacked copy: its name (a summary key prefix) and everything that determines it."""

    name: str
    attack: str
    settings: dict[str, Any]


@dataclass
class RelearnPlan:
    """``config.steps`` AdamW steps of ``batch_size`` sequences per learning rate, on OU ``datasets``."""

    config: RelearnConfig
    batch_size: int
    datasets: dict[str, Any]
    collators: dict[str, Any]


@dataclass
class QuantizationPlan:
    """One quantized copy per RTN bit width or bitsandbytes 4-bit type (see ``core.attacks.quantization``)."""

    bits: list[int | str]
    group_size: int | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None


@dataclass
class AttackPlan:
    """What the ``attacks`` block asks for; an empty plan means OU's plain lm-eval evaluation."""

    relearn: RelearnPlan | None = None
    quantization: QuantizationPlan | None = None
    variants: list[Variant] = field(default_factory=list)

    @classmethod
    def from_config(cls, attacks: Mapping[str, Any] | None) -> AttackPlan:
        """Check ``attacks`` (plain containers) and fill in defaults; raises ``ValueError`` naming the fix."""
        if not attacks:
            return cls()
        if not isinstance(attacks, Mapping):
            raise ValueError(
                f"attacks must be a mapping {{relearn: {{...}}, quantization: {{...}}}} or null, not {attacks!r}."
            )
        unknown = sorted(set(attacks) - set(ATTACK_OPTIONS))
        if unknown:
            raise ValueError(f"Unknown attack(s) {unknown} under attacks; known: {sorted(ATTACK_OPTIONS)}.")
        for name, options in attacks.items():
            if options is not None and not isinstance(options, Mapping):
                raise ValueError(f"attacks.{name} must be a mapping of options (or null to skip it), got {options!r}.")
            bad = sorted(set(options or {}) - set(ATTACK_OPTIONS[name]))
            if bad:
                raise ValueError(f"attacks.{name}: unknown option(s) {bad}; it takes {list(ATTACK_OPTIONS[name])}.")
        plan = cls(
            relearn=_relearn_plan(attacks["relearn"]) if attacks.get("relearn") is not None else None,
            quantization=_quantization_plan(attacks["quantization"])
            if attacks.get("quantization") is not None
            else None,
        )
        plan.variants = plan._variants()
        return plan

    def _variants(self) -> list[Variant]:
        out = []
        if self.quantization is not None:
            q = self.quantization
            for bits in q.bits:
                settings = {"bits": bits, "group_size": q.group_size, "include": q.include, "exclude": q.exclude}
                out.append(Variant(bits if isinstance(bits, str) else f"int{bits}", "quantization", settings))
        if self.relearn is not None:
            r = self.relearn
            for lr in r.config.learning_rates:
                settings = {
                    "lr": lr,
                    "steps": r.config.steps,
                    "batch_size": r.batch_size,
                    "max_grad_norm": r.config.max_grad_norm,
                    "seed": r.config.seed,
                    "datasets": r.datasets,
                }
                out.append(Variant(f"relearn_lr{lr:g}", "relearn", settings))
        return out


def _relearn_plan(options: Mapping[str, Any]) -> RelearnPlan:
    datasets = dict(options.get("datasets") or {})
    if not datasets:
        raise ValueError(
            "attacks.relearn has no data: set attacks.relearn.datasets to OU dataset configs (eval=lm_eval_robust "
            "ships WMDP_forget and WMDP_retain), or attacks.relearn=null to skip the relearning attack."
        )
    collators = dict(options.get("collators") or {})
    if len(collators) != 1:
        raise ValueError(
            "attacks.relearn.collators must hold exactly one OU collator config (e.g. "
            f"DataCollatorForSupervisedDataset), got {sorted(collators)}."
        )
    batch_size = options.get("batch_size", 8)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"attacks.relearn.batch_size must be a positive integer, got {batch_size!r}.")
    defaults = RelearnConfig()
    lrs = options.get("learning_rates", defaults.learning_rates)
    try:
        config = RelearnConfig(
            steps=int(options.get("steps", defaults.steps)),
            learning_rates=[lrs] if isinstance(lrs, (int, float, str)) else list(lrs),
            max_grad_norm=float(options.get("max_grad_norm", defaults.max_grad_norm)),
            seed=int(options.get("seed", defaults.seed)),
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"attacks.relearn: {err} (steps and seed are integers, learning_rates floats).") from err
    if len({f"{lr:g}" for lr in config.learning_rates}) != len(config.learning_rates):
        raise ValueError(f"attacks.relearn.learning_rates has duplicates: {config.learning_rates}.")
    return RelearnPlan(config, batch_size, datasets, collators)


def _quantization_plan(options: Mapping[str, Any]) -> QuantizationPlan:
    bits = options.get("bits", [8, 4])
    bits = [bits] if isinstance(bits, int | str) else list(bits or [])
    if not bits or any(isinstance(b, bool) or not isinstance(b, int | str) for b in bits):
        raise ValueError(
            f"attacks.quantization.bits must be a non-empty list of bit widths or {BNB_SCHEMES}, got {bits!r}."
        )
    bits = [check_scheme(b) for b in bits]
    if len(set(bits)) != len(bits):
        raise ValueError(f"attacks.quantization.bits has duplicates: {bits}.")
    group_size = options.get("group_size")
    if group_size is not None and (not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"attacks.quantization.group_size must be null or a positive integer, got {group_size!r}.")
    include, exclude = options.get("include"), options.get("exclude")
    return QuantizationPlan(bits, group_size, list(include) if include else None, list(exclude) if exclude else None)


def relearn_batches(
    dataset: Dataset | Mapping[str, Dataset], collator: Any, batch_size: int, steps: int, seed: int
) -> list[Batch]:
    """The first ``steps`` shuffled batches (seeded) of ``dataset`` (several are concatenated); fewer when the data
    is shorter, and ``relearn_copy`` then cycles through them."""
    parts = list(dataset.values()) if isinstance(dataset, Mapping) else [dataset]
    data = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    if len(data) == 0:
        raise ValueError("The relearn data is empty: check attacks.relearn.datasets (files, splits, text_key).")
    loader = DataLoader(
        data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed), collate_fn=collator
    )
    return list(itertools.islice(loader, steps))


@torch.no_grad()
def relative_weight_change(before: torch.nn.Module, after: torch.nn.Module) -> float:
    """``||w' - w|| / ||w||`` over all parameters of two models of the same architecture."""
    diff, norm = 0.0, 0.0
    for (name, p), (name2, q) in zip(before.named_parameters(), after.named_parameters(), strict=True):
        if name != name2:
            raise ValueError(f"Parameter {name} does not match {name2}: not copies of one model.")
        diff += float((q.float() - p.float()).pow(2).sum())
        norm += float(p.float().pow(2).sum())
    return (diff / norm) ** 0.5 if norm else 0.0


def prefixed(summary: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``summary`` with every key under ``<prefix>/``."""
    return {f"{prefix}/{key}": value for key, value in summary.items()}


def is_forget_task(task: str, forget_tasks: Sequence[str] | None) -> bool:
    """``forget_tasks`` names them; ``None``: every task whose name starts with ``wmdp``."""
    return task.startswith("wmdp") if forget_tasks is None else task in forget_tasks


def worst_over_variants(
    summary: Mapping[str, Any],
    base_keys: Sequence[str],
    variants: Sequence[str],
    forget_tasks: Sequence[str] | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """``worst/<key>`` for each of ``base_keys`` (``<task>/<metric>``) over the variants' ``<variant>/<key>`` values
    in ``summary``, and which variant gave each. Keys without a numeric value under any variant are left out."""
    higher_is_better = higher_is_better or {}
    worst: dict[str, Any] = {}
    chosen: dict[str, str] = {}
    for key in base_keys:
        if key.endswith(STDERR_SUFFIX):
            continue
        scores = {v: summary.get(f"{v}/{key}") for v in variants}
        scores = {v: float(s) for v, s in scores.items() if isinstance(s, (int, float)) and not isinstance(s, bool)}
        if not scores:
            continue
        task = key.rsplit("/", 1)[0]
        better = higher_is_better.get(key, True)
        value = worst_case(scores, higher_is_worse=better if is_forget_task(task, forget_tasks) else not better)
        variant = next((v for v, s in scores.items() if s == value), None)
        if variant is None:  # every score was NaN
            continue
        worst[f"{WORST}/{key}"], chosen[key] = value, variant
    for key in base_keys:
        metric = key[: -len(STDERR_SUFFIX)]
        if key.endswith(STDERR_SUFFIX) and metric in chosen:
            worst[f"{WORST}/{key}"] = summary.get(f"{chosen[metric]}/{key}")
            chosen[key] = chosen[metric]
    return worst, chosen
