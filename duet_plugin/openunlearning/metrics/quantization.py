"""``quantization_attack``: re-measure forget metrics on round-to-nearest int8/int4 copies of the model.

Cost: one model copy per bit width, alive one at a time, plus the child metrics' own cost per copy (e.g. one
generation pass over the forget set for forget_Q_A_ROUGE). Where a GPU and bitsandbytes are present, the config can
add ``bnb4`` (bitsandbytes NF4 loading of the saved model); on a CPU the RTN simulation is what runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from duet_plugin.core.attacks.quantization import DEFAULT_INCLUDE, quantized_copy
from duet_plugin.openunlearning.metrics.attack import AttackMetric


class QuantizationAttack(AttackMetric):
    OPTIONS: ClassVar[Mapping[str, Any]] = {"bits": (8, 4), "group_size": None, "include": None, "exclude": None}

    def attacked_models(
        self,
        model: Any,
        shared: Mapping[str, Any],
        bits: Sequence[int] = (8, 4),
        group_size: int | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> Iterator[tuple[str, Any, dict[str, Any]]]:
        for b in [bits] if isinstance(bits, int) else list(bits):
            attacked, report = quantized_copy(
                model, int(b), include=include or DEFAULT_INCLUDE, exclude=exclude or (), group_size=group_size
            )
            info = {"relative_weight_error": report.relative_error, "quantized_tensors": len(report.names)}
            yield f"int{b}", attacked, info
            del attacked  # one copy alive at a time


quantization_attack = QuantizationAttack("quantization_attack")
