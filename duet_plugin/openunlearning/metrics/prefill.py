"""``prefill_attack``: re-measure forget metrics with the assistant turn seeded with the true answer's first k tokens.

A model that only learnt to refuse at the first response token continues a forbidden answer once it has started.
ROUGE children score the generated continuation against the rest of the answer, probability children the rest of
the answer given the prefill. Cost: the child metrics once per k; no model copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from duet_plugin.openunlearning.metrics.attack import Attack, AttackMetric, with_attacked_inputs


def _lengths(prefill_tokens: int | Sequence[int]) -> list[int]:
    return [int(prefill_tokens)] if isinstance(prefill_tokens, int) else [int(k) for k in prefill_tokens]


class PrefillAttack(AttackMetric):
    OPTIONS: ClassVar[Mapping[str, Any]] = {"prefill_tokens": (2, 4, 8)}

    def check(self, metric_name: str, children: Mapping[str, Any], **options: Any) -> None:
        lengths = _lengths(options["prefill_tokens"])
        if not lengths or any(k < 1 for k in lengths):
            raise ValueError(f"{metric_name}: prefill_tokens must be positive token counts, got {lengths}.")
        with_attacked_inputs(metric_name, children)

    def attacks(
        self,
        model: Any,
        metric_name: str,
        children: Mapping[str, Any],
        shared: Mapping[str, Any],
        prefill_tokens: int | Sequence[int] = (2, 4, 8),
    ) -> Iterator[Attack]:
        for k in _lengths(prefill_tokens):
            yield Attack(f"k{k}", model, with_attacked_inputs(metric_name, children, prefill_tokens=k), {"tokens": k})


prefill_attack = PrefillAttack("prefill_attack")
