"""Registration of the plugin's components into OpenUnlearning's registries, without editing OU's files.

OU keeps plain module-level dicts (``trainer.TRAINER_REGISTRY``, ``data.DATASET_REGISTRY``,
``data.COLLATOR_REGISTRY``, ...) keyed by class name and looked up at call time, so adding entries after OU's
modules are imported is enough. ``register()`` is idempotent, refuses to replace an entry that OU (or another
plugin) already owns, and does nothing when OU is not loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duet_plugin


class RegistrationError(RuntimeError):
    """A plugin component's name is already taken in an OU registry by something else."""


# (OU module, registry attribute, what the plugin puts there)
def _components() -> list[tuple[str, str, dict[str, Any]]]:
    from duet_plugin.openunlearning.attack_datasets import AttackQADataset
    from duet_plugin.openunlearning.collators import DUETCollator
    from duet_plugin.openunlearning.datasets import UnifiedQueryDataset, UnifiedStreamsDataset
    from duet_plugin.openunlearning.evaluators.robust_lm_eval import RobustLMEvalEvaluator
    from duet_plugin.openunlearning.metrics.directional_ablation import directional_ablation_metric
    from duet_plugin.openunlearning.metrics.embedding_attack import embedding_attack
    from duet_plugin.openunlearning.metrics.logit_lens import logit_lens
    from duet_plugin.openunlearning.metrics.over_refusal import over_refusal
    from duet_plugin.openunlearning.metrics.performance_shift import performance_shift_metric
    from duet_plugin.openunlearning.metrics.prefill import prefill_attack
    from duet_plugin.openunlearning.metrics.prompt import prompt_attack
    from duet_plugin.openunlearning.metrics.quantization import quantization_attack
    from duet_plugin.openunlearning.metrics.relearn import relearn_attack
    from duet_plugin.openunlearning.trainers import plugin_trainers

    return [
        ("trainer", "TRAINER_REGISTRY", plugin_trainers()),
        (
            "data",
            "DATASET_REGISTRY",
            {
                "UnifiedQueryDataset": UnifiedQueryDataset,
                "UnifiedStreamsDataset": UnifiedStreamsDataset,
                "AttackQADataset": AttackQADataset,
            },
        ),
        ("data", "COLLATOR_REGISTRY", {"DUETCollator": DUETCollator}),
        (
            "evals.metrics",
            "METRICS_REGISTRY",
            {
                m.name: m
                for m in (
                    relearn_attack,
                    prompt_attack,
                    prefill_attack,
                    quantization_attack,
                    over_refusal,
                    performance_shift_metric,
                    logit_lens,
                    directional_ablation_metric,
                    embedding_attack,
                )
            },
        ),
        ("evals", "EVALUATOR_REGISTRY", {"RobustLMEvalEvaluator": RobustLMEvalEvaluator}),
    ]


def framework_detected() -> bool:
    """True when OU's packages are imported in this process (``trainer`` with its registry and loader)."""
    trainer = sys.modules.get("trainer")
    return trainer is not None and hasattr(trainer, "TRAINER_REGISTRY") and hasattr(trainer, "load_trainer")


def _same(a: Any, b: Any) -> bool:
    return a is b or (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == (
        getattr(b, "__module__", None),
        getattr(b, "__qualname__", None),
    )


def register(components: Callable[[], list[tuple[str, str, dict[str, Any]]]] | None = None) -> bool:
    """Add the plugin's trainers, datasets and collators to OU's registries.

    Returns False (and does nothing) when OU is not loaded. Raises :class:`RegistrationError` before touching
    any registry if one of our names is already taken by a different object.
    """
    if not framework_detected():
        return False
    planned = []
    for module_name, attr, entries in (components or _components)():
        module = sys.modules.get(module_name)
        if module is None:
            __import__(module_name)
            module = sys.modules[module_name]
        registry = getattr(module, attr)
        for name, obj in entries.items():
            existing = registry.get(name)
            if existing is not None and not _same(existing, obj):
                where = f"{getattr(existing, '__module__', '?')}.{getattr(existing, '__qualname__', existing)}"
                raise RegistrationError(
                    f"OpenUnlearning's {module_name}.{attr} already has {name!r} ({where}); duet-plugin will not "
                    f"replace it. Remove or rename the other component, or uninstall the plugin that adds it."
                )
            planned.append((registry, name, obj))
    for registry, name, obj in planned:
        registry[name] = obj
    return True


def config_dir() -> Path:
    """The plugin's Hydra config tree (``duet_plugin/configs``, shipped as package data)."""
    path = Path(duet_plugin.__file__).resolve().parent / "configs"
    if not (path / "trainer" / "DUET.yaml").is_file():
        raise FileNotFoundError(f"duet-plugin's configs are missing from {path}; reinstall the package.")
    return path
