"""``logit_lens``: per layer, how probable (and how highly ranked) the true answer's tokens are when the model's final
norm and LM head read the residual stream, teacher-forced on the forget set.

``agg_value`` is the best layer's mean probability: the most the answer can be read from any layer. Next to the final
layer's (``final``), it tells an answer that is suppressed at the end (readable in the middle, not at the output)
from one that is gone (low everywhere). Cost: one forward over the dataset with hidden states kept, and the LM head
applied per layer to the answer positions only. The dataset and collator come from the metric's config, as for OU's
``probability`` metric; several datasets (each with an ``access_key``) are each measured, the first giving
``agg_value``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from evals.metrics.base import unlearning_metric
from torch.utils.data import DataLoader

from duet_plugin.core.attacks.logit_lens import DEFAULT_CHUNK, LogitLensError, run_logit_lens


def _batches(loader: DataLoader) -> Iterator[dict[str, Any]]:
    for batch in loader:
        if "input_ids" not in batch:  # OU's multi-answer layout: {"0": {...}, "1": {...}}
            raise LogitLensError(
                "logit_lens reads single-answer QA items; this dataset gives several answers per item "
                f"(keys {sorted(batch)[:5]}); use the plain split (e.g. forget10, not forget10_perturbed)."
            )
        yield batch


def _measure(model: Any, dataset: Any, collator: Any, batch_size: int, final_norm: Any, chunk: int) -> dict:
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    run = run_logit_lens(model, _batches(loader), final_norm=final_norm, chunk_size=chunk)
    summary = run.summary()
    return {"agg_value": summary["best"]["prob"], **summary, "value_by_index": run.by_index()}


@unlearning_metric(name="logit_lens")
def logit_lens(model: Any, **kwargs: Any) -> dict[str, Any]:
    data, collators = kwargs.get("data"), kwargs.get("collators")
    if data is None or collators is None:
        raise ValueError("logit_lens needs `datasets` and `collators` in its config (OU QA data, e.g. the forget set).")
    batch_size = int(kwargs.get("batch_size") or 8)
    chunk = int(kwargs.get("chunk_size") or DEFAULT_CHUNK)
    final_norm = kwargs.get("final_norm")
    if not isinstance(data, Mapping):
        return _measure(model, data, collators, batch_size, final_norm, chunk)
    results = {}
    for name, dataset in data.items():
        if isinstance(collators, Mapping) and name not in collators:
            raise ValueError(f"logit_lens: several collators {sorted(collators)} but none named {name!r}.")
        collator = collators[name] if isinstance(collators, Mapping) else collators
        results[name] = _measure(model, dataset, collator, batch_size, final_norm, chunk)
    first_name, first = next(iter(results.items()))
    top = {k: v for k, v in first.items() if k != "value_by_index"}
    return {**top, "agg_set": first_name, "by_set": results}
