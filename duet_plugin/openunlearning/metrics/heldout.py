"""Scoring a metric on part of its rows: what relearn_attack's ``heldout_facts`` mode, directional_ablation and
embedding_attack share. A partition of the forget rows (by question, or by concept: whole authors) is drawn by
``duet_plugin.core.attacks.relearn.partition_indices``; a child metric's value on a part is the mean, over the
part's indices, of the per-item field of its ``value_by_index`` whose mean over all items is its ``agg_value``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

PARTITIONS = ("question", "concept")
#: Per-item fields tried first when finding the one a child's agg_value averages.
PREFERRED_FIELDS = ("prob", "rougeL_recall", "rougeL_f1", "score", "value")


def item_value(value: Any) -> float | None:
    """A per-item number (a list, for several answers per item, is averaged as OU's aggregate_to_1D does)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return None if math.isnan(value) else float(value)
    if isinstance(value, list | tuple) and value and all(isinstance(v, int | float) for v in value):
        return sum(value) / len(value)
    return None


def index_field(child: str, result: Mapping[str, Any]) -> str:
    """The per-item field of ``result['value_by_index']`` whose mean over all items is ``result['agg_value']``."""
    by_index = result.get("value_by_index") or {}
    agg = result.get("agg_value")
    first = next((v for v in by_index.values() if isinstance(v, Mapping)), {})
    keys = [k for k in PREFERRED_FIELDS if k in first] + [k for k in first if k not in PREFERRED_FIELDS]
    for key in keys:
        values = [item_value(v.get(key)) for v in by_index.values() if isinstance(v, Mapping)]
        values = [v for v in values if v is not None]
        if values and agg is not None:
            if math.isclose(sum(values) / len(values), float(agg), rel_tol=1e-6, abs_tol=1e-9):
                return key
    raise ValueError(
        f"relearn_attack (heldout_facts): pre_compute metric {child!r} has no per-item field in value_by_index whose "
        f"mean is its agg_value, so its held-out part cannot be scored; use per-item metrics such as "
        f"forget_Q_A_ROUGE or forget_Q_A_Prob, or mode=same."
    )


def subset_mean(by_index: Mapping[Any, Any], key: str, indices: Sequence[int]) -> float | None:
    """Mean of ``key`` over ``indices`` of a value_by_index (int or, from JSON, str keys)."""
    items = {int(k): v for k, v in by_index.items()}
    values = [item_value((items.get(i) or {}).get(key)) for i in indices]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def concept_labels(data: Any, concept_key: str | None, concept_size: int) -> list[Any]:
    """One concept label per row of the relearn dataset: its ``concept_key`` column, else blocks of
    ``concept_size`` consecutive rows (TOFU: 20 questions per author)."""
    parts = dict(data) if isinstance(data, Mapping) else {"": data}
    labels: list[Any] = []
    for name, part in parts.items():
        if concept_key is None:
            labels += [f"{name}/{i // concept_size}" for i in range(len(part))]
            continue
        table = getattr(part, "data", None)
        columns = getattr(table, "column_names", None) or []
        if concept_key not in columns:
            raise ValueError(
                f"partition_by=concept with concept_key={concept_key!r}, but the dataset "
                f"{name or type(part).__name__} has columns {columns}; set concept_key to one of them, or null to "
                f"group blocks of concept_size rows."
            )
        labels += [f"{name}/{v}" for v in table[concept_key]]
    if len(set(labels)) < 2:
        how = f"the {concept_key!r} column" if concept_key else f"blocks of concept_size={concept_size} rows"
        raise ValueError(
            f"partition_by=concept: the {len(labels)} rows make {len(set(labels))} concept ({how}), and a held-out "
            f"split needs two. Set concept_size to the questions per author (TOFU: 20, the demo's authors: 5), "
            f"concept_key to a column that names it, or partition_by=question."
        )
    return labels


def check_partition(metric_name: str, options: Mapping[str, Any]) -> None:
    """``partition_by`` and ``heldout_fraction`` of a metric's options, before any compute."""
    if options["partition_by"] not in PARTITIONS:
        raise ValueError(f"{metric_name}: partition_by={options['partition_by']!r}; choose one of {PARTITIONS}.")
    if not 0 < float(options["heldout_fraction"]) < 1:
        raise ValueError(f"{metric_name}: heldout_fraction must be in (0, 1), got {options['heldout_fraction']}.")
