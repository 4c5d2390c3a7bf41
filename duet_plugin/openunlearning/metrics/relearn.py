"""``relearn_attack``: fine-tune a copy of the model on a relearn split at each learning rate, re-measure.

Cost: ``len(learning_rates) x steps`` optimiser steps at ``batch_size`` (one model copy with AdamW state alive at a
time), plus the child metrics on each copy. Defaults (2 lrs x 10 steps x 8) finish on a small model on a CPU in
minutes; UNDO's paper-scale attack is ``steps: 500`` over ``learning_rates: [2.15e-5, 1e-5, 4.62e-6]``.
With ``original_logs_path`` (the EVAL.json of the model before unlearning) it also reports the recovery
``(after - unlearned) / (original - unlearned)`` per variant and child.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import ConcatDataset, DataLoader

from duet_plugin.core.attacks.relearn import RelearnConfig, recovery, relearn_copy
from duet_plugin.openunlearning.metrics.attack import AttackMetric


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
    }

    def check(self, metric_name: str, children: Mapping[str, Any], **options: Any) -> None:
        RelearnConfig(
            steps=int(options["steps"]),
            learning_rates=list(options["learning_rates"]),
            max_grad_norm=float(options["max_grad_norm"]),
            seed=int(options["seed"]),
        )
        if not options["datasets"] or not options["collators"]:
            raise ValueError(
                f"{metric_name}: no relearn split. Set datasets and collators (the plugin's relearn_attack.yaml "
                f"relearns on the forget split: TOFU_QA_forget with DataCollatorForSupervisedDataset)."
            )
        if int(options["batch_size"]) < 1:
            raise ValueError(f"{metric_name}: batch_size must be >= 1, got {options['batch_size']}.")
        path = options["original_logs_path"]
        if path is not None and not Path(path).is_file():
            raise ValueError(
                f"{metric_name}: original_logs_path={path} is not a file; point it at the EVAL.json that OU's "
                f"eval.py wrote for the model before unlearning, or set it to null."
            )

    def attacked_models(
        self,
        model: Any,
        shared: Mapping[str, Any],
        datasets: Any = None,
        collators: Any = None,
        batch_size: int = 8,
        steps: int = 10,
        learning_rates: Sequence[float] = (1e-4, 1e-3),
        max_grad_norm: float = 1.0,
        seed: int = 0,
        original_logs_path: str | None = None,
    ) -> Iterator[tuple[str, Any, dict[str, Any]]]:
        cfg = RelearnConfig(int(steps), list(learning_rates), float(max_grad_norm), int(seed))
        data = self.get_datasets(dataset_cfgs=datasets, **shared)
        if isinstance(data, Mapping):
            data = ConcatDataset(list(data.values()))
        collator = self.get_collators(collator_cfgs=collators, **shared)
        loader = DataLoader(
            data, batch_size=int(batch_size), shuffle=True, collate_fn=collator,
            generator=torch.Generator().manual_seed(cfg.seed),
        )  # fmt: skip
        batches = list(islice(loader, cfg.steps))  # relearn_copy cycles through them
        for lr in cfg.learning_rates:
            info = {"lr": lr, "steps": cfg.steps, "batch_size": int(batch_size), "examples": len(data)}
            yield f"lr{lr:g}", relearn_copy(model, batches, lr, cfg), info

    def finish(self, result: dict[str, Any], original_logs_path: str | None = None, **options: Any) -> None:
        if original_logs_path is None:
            return
        logs = json.loads(Path(original_logs_path).read_text())
        original = {key: (logs.get(key) or {}).get("agg_value") for key in result["unattacked"]}
        result["original"] = original
        result["recovery_by_attack"] = {
            variant: {
                key: recovery(after, result["unattacked"][key], original[key])
                if None not in (after, result["unattacked"][key], original[key])
                else None
                for key, after in values.items()
            }
            for variant, values in result["value_by_attack"].items()
        }
        worst = result["worst_variant"]
        result["recovery"] = result["recovery_by_attack"][worst][result["worst_of"]] if worst else None


relearn_attack = RelearnAttack("relearn_attack")
