"""``quantization_attack``: re-measure forget metrics on round-to-nearest int8/int4 copies of the model.

Cost: one model copy per bit width, alive one at a time, plus the child metrics' own cost per copy (e.g. one
generation pass over the forget set for forget_Q_A_ROUGE). Where a CUDA GPU and bitsandbytes are present, ``bits`` may
also list ``nf4``/``fp4``: each weight round-tripped through bitsandbytes' own 4-bit kernels.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from duet_plugin.core.attacks.quantization import DEFAULT_INCLUDE, check_scheme, quantized_copy
from duet_plugin.openunlearning.metrics.attack import AttackMetric


class QuantizationAttack(AttackMetric):
    OPTIONS: ClassVar[Mapping[str, Any]] = {"bits": (8, 4), "group_size": None, "include": None, "exclude": None}

    def check(self, metric_name: str, children: Mapping[str, Any], **options: Any) -> None:
        for b in _schemes(options["bits"]):
            check_scheme(b)

    def attacked_models(
        self,
        model: Any,
        shared: Mapping[str, Any],
        bits: Sequence[int | str] = (8, 4),
        group_size: int | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> Iterator[tuple[str, Any, dict[str, Any]]]:
        for b in _schemes(bits):
            attacked, report = quantized_copy(
                model, b, include=include or DEFAULT_INCLUDE, exclude=exclude or (), group_size=group_size
            )
            info = {"relative_weight_error": report.relative_error, "quantized_tensors": len(report.names)}
            yield (report.bits if isinstance(report.bits, str) else f"int{report.bits}"), attacked, info
            del attacked  # one copy alive at a time


def _schemes(bits: int | str | Sequence[int | str]) -> list[int | str]:
    return [bits] if isinstance(bits, int | str) else list(bits)


quantization_attack = QuantizationAttack("quantization_attack")
