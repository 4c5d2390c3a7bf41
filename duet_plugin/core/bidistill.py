"""Bidirectional multi-objective distillation (a reconstruction of Zhong, Liu, Zhu 2026, "Harmonizing Multi-Objective
LLM Unlearning"): framework-free config, teacher targets and loss. The OU trainer only wires them.

Per stream ``s`` (forget, retain, boundary, adversarial) and aligned position, with teacher = the prompt-steered
starting model::

    L = Σ_s  w_pull · w[s].pull · D(student, teacher | teacher's top-K)      (pull: DUET's term)
           + w_push · w[s].push · D(student, teacher | student's top-K_push)  (push: suppress what the student
                                                                                 ranks high and the teacher does not)

``D`` is Huber/MSE on raw logits, KL over the K indices plus a tail bucket, or BiLD's pairwise-difference KL.
Adversarial records carry a prefill (the start of a forbidden answer); the student is distilled at the position
after it, towards the steered teacher's response start (``prefill_target: restart``: the teacher answers the bare
question, so the student learns to deflect even after a forced start) or towards the teacher continuing the same
forced start (``continue``, which only helps if the steered teacher itself deviates after a prefill).
Ablations: ``w_push: 0`` with ``distance: huber`` on forget+retain is DUET's loss; ``distance: bild`` with both
directions is BiLD's loss (teacher-led + student-led).

The push term needs the teacher's values at indices the student picks during training. Online, the teacher's full
logits are at hand. Precomputed, the store keeps the teacher's top ``store_top_k`` (K') values per position; a
student index outside them gets the K'-th value, an upper bound (see ``losses.teacher_values_at``), so a small K'
pushes less. ``store_top_k: null`` stores the full vocabulary (exact, V floats per position).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from duet_plugin.core.distributed import mean_over_ranks
from duet_plugin.core.losses import BIDIRECTIONAL_DISTANCES, directed_loss, validate_distance, validate_top_k
from duet_plugin.core.options import OptionError, one_of, option, positive_int
from duet_plugin.core.teacher_targets import (
    PrefixCaches,
    SteeredTeacherConfig,
    TargetConfig,
    TeacherTargetStore,
    stream_targets,
    student_logits_at,
)
from duet_plugin.core.unified import STREAMS

DIRECTIONS = ("pull", "push")
#: What the student is aligned with after a prefill: the steered teacher's response start (``restart``: the teacher
#: sees the bare question) or the teacher continuing the same forced start (``continue``).
PREFILL_TARGETS = ("restart", "continue")
BALANCES = ("start", "grad", "each", "none")
#: Terms whose first values average below this are left unscaled.
MIN_SCALE = 1e-6


def default_stream_weights() -> dict[str, dict[str, float]]:
    """Pull everywhere; push only where knowledge must go (forget, and prefilled forget answers)."""
    return {
        "forget": {"pull": 1.0, "push": 1.0},
        "retain": {"pull": 1.0, "push": 0.0},
        "boundary": {"pull": 1.0, "push": 0.0},
        "adversarial": {"pull": 1.0, "push": 1.0},
    }


def parse_stream_weights(weights: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """``{stream: {pull: w, push: w}}`` merged over the defaults; unknown streams/directions and negative weights
    are refused, naming the option."""
    out = default_stream_weights()
    for stream, value in dict(weights or {}).items():
        key = f"stream_weights.{stream}"
        if stream not in STREAMS:
            raise OptionError(key, f"is not a stream; streams are {STREAMS}.")
        if not isinstance(value, Mapping):
            raise OptionError(key, "must map directions to weights, e.g. {pull: 1.0, push: 0.5}.")
        for direction, w in dict(value).items():
            if direction not in DIRECTIONS:
                raise OptionError(f"{key}.{direction}", f"is not a direction; directions are {DIRECTIONS}.")
            if float(w) < 0:
                raise OptionError(f"{key}.{direction}", f"must be >= 0, got {w}.")
            out[stream][direction] = float(w)
    return out


@dataclass
class BiDistillConfig(SteeredTeacherConfig):
    """BiDistill's options (the shipped defaults: ``configs/trainer/BiDistill.yaml``). The paper's values are
    not public; defaults are DUET's where the terms coincide, BiLD's for its distance (T = 3)."""

    top_k: int = option(10, help="pull: the teacher's top-K indices per aligned position.")
    push_top_k: int = option(10, help="push: the student's top-K indices per aligned position.")
    store_top_k: int | None = option(
        256,
        help="Precomputed teacher values kept per position (K'); a student index outside them gets the K'-th value "
        "(an upper bound: pushes less). null = the full vocabulary (exact, V floats per position).",
    )
    distance: str = option(
        "huber", help="huber | mse (raw logits) | kl (K + tail bucket) | bild (pairwise logit differences, KL)."
    )
    huber_delta: float = option(1.0, help="The Huber loss's delta (distance: huber).")
    bild_temperature: float = option(3.0, help="BiLD's temperature T (distance: bild).")
    w_pull: float = option(1.0, help="Scale of every pull term.")
    w_push: float = option(1.0, help="Scale of every push term.")
    stream_weights: dict[str, dict[str, float]] = option(
        help="Per stream and direction, merged over the defaults: {forget: {pull: 1, push: 1}, retain: {pull: 1, "
        "push: 0}, boundary: {pull: 1, push: 0}, adversarial: {pull: 1, push: 1}}.",
        factory=default_stream_weights,
    )
    balance: str = option(
        "start",
        help="How the (stream, direction) terms are put on one scale before the weights apply, fixed at the first "
        "step (mean over processes; the divisors are logged as bidistill/scale_<term>). start: a term whose value "
        "is above the mean of the first values is divided down to that mean; smaller terms keep their size (with a "
        "raw-logit distance a real vocabulary makes the prefilled adversarial pull 20-40x the others) | grad: every "
        "term is divided by its gradient norm over the trainable weights at the first step, relative to the mean of "
        "those norms, so each weight is its term's share of the first step's pull on the weights (one extra "
        "backward pass per term, once; not under DeepSpeed ZeRO-3) | each: the same with the terms' values, so "
        "each weight is its term's share of the first loss (a value is not a pull: a Huber term in its linear "
        "regime pulls at most 1 per logit however large it is) | none: the raw weighted sum.",
    )
    balance_floor: float = option(
        0.1,
        help="balance: grad and each: a term that starts below this fraction of the mean is divided by the fraction, "
        "not by its own size (a term that starts near zero, such as the retain pull when the prefix leaves retain "
        "answers alone, would otherwise be multiplied by hundreds). In (0, 1]; 1 with each is balance: start.",
    )
    prefill_target: str = option(
        "restart",
        help="After a prefill, align the student with the steered teacher's response start (restart: the teacher "
        "sees the bare question) | with the teacher continuing the same forced start (continue).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_distance(self.distance, BIDIRECTIONAL_DISTANCES)
        for name in ("top_k", "push_top_k"):
            positive_int(name, getattr(self, name))
        if self.distance == "bild" and min(self.top_k, self.push_top_k) < 2:
            raise OptionError("distance", "=bild compares pairs of logits: top_k and push_top_k must be >= 2.")
        if self.store_top_k is not None and self.store_top_k < max(self.top_k, self.push_top_k):
            raise OptionError(
                "store_top_k",
                f"={self.store_top_k} must be >= top_k and push_top_k ({max(self.top_k, self.push_top_k)}), or null "
                "for the full vocabulary.",
            )
        for name in ("w_pull", "w_push"):
            if getattr(self, name) < 0:
                raise OptionError(name, f"must be >= 0, got {getattr(self, name)!r}.")
        for name in ("huber_delta", "bild_temperature"):
            if getattr(self, name) <= 0:
                raise OptionError(name, f"must be positive, got {getattr(self, name)!r}.")
        one_of("prefill_target", self.prefill_target, PREFILL_TARGETS)
        one_of("balance", self.balance, BALANCES)
        if not 0 < self.balance_floor <= 1:
            raise OptionError("balance_floor", f"must be in (0, 1], got {self.balance_floor!r}.")
        self.stream_weights = parse_stream_weights(self.stream_weights)

    @property
    def teacher_prefill(self) -> bool:
        return self.prefill_target == "continue"

    def stored_k(self, vocab_size: int) -> int:
        """Teacher values kept per position: the full vocabulary online (exact push) or when ``store_top_k`` is
        null or not smaller than the vocabulary; else ``store_top_k``."""
        if self.teacher_mode == "online" or self.store_top_k is None:
            return vocab_size
        return min(self.store_top_k, vocab_size)

    def target_config(self, vocab_size: int | None = None) -> TargetConfig:
        """The engine's targets for this method: K' values per position (see :meth:`stored_k`), after checking the
        pull and push K against the vocabulary."""
        if vocab_size is None:
            raise ValueError("BiDistill's teacher targets depend on the vocabulary size: pass vocab_size.")
        for name in ("top_k", "push_top_k"):
            validate_top_k(getattr(self, name), vocab_size, option=name)
        return TargetConfig(self.stored_k(vocab_size), self.continuation_length, self.teacher_batch_size)

    def weight(self, stream: str, direction: str) -> float:
        scale = self.w_pull if direction == "pull" else self.w_push
        return scale * self.stream_weights.get(stream, {}).get(direction, 0.0)

    def as_duet(self) -> BiDistillConfig:
        """The DUET ablation of this config: pull only (forget and retain, weight 1), Huber distance, raw sum."""
        weights = {s: {"pull": 1.0 if s in ("forget", "retain") else 0.0, "push": 0.0} for s in STREAMS}
        return dataclasses.replace(self, distance="huber", w_push=0.0, stream_weights=weights, balance="none")


class TermScales:
    """What each term is divided by for the whole run, fixed at the first step from its size there ``v`` (its value,
    or for ``balance: grad`` its gradient norm; mean over processes) and the mean ``m`` of all those sizes:
    ``max(v, floor * m) / m``. Every term at or above ``floor * m`` therefore starts at size ``m``; a smaller one is
    multiplied by ``1 / floor`` at most. ``floor = 1`` on values is ``balance: start`` (large terms brought down to
    the mean, none amplified). Every process must call :meth:`of` with the same terms at the same step (they do:
    the terms follow the weights, not the data)."""

    def __init__(self, floor: float = 1.0) -> None:
        if not 0 < floor <= 1:
            raise ValueError(f"TermScales' floor must be in (0, 1], got {floor!r}.")
        self.floor = floor
        self.values: dict[str, float] = {}

    def of(self, terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
        if not self.values:
            keys = list(terms)
            firsts = mean_over_ranks(torch.stack([terms[k].detach().float() for k in keys])).tolist()
            mean = sum(firsts) / len(firsts)
            if mean > MIN_SCALE:
                self.values = {k: max(v, self.floor * mean) / mean for k, v in zip(keys, firsts, strict=True)}
            else:
                self.values = dict.fromkeys(keys, 1.0)
        missing = sorted(set(terms) - set(self.values))
        if missing:
            raise ValueError(f"BiDistill term(s) {missing} appeared after the first step; balance fixes the terms "
                             f"there ({sorted(self.values)}). Use balance: none.")  # fmt: skip
        return {k: self.values[k] for k in terms}

    @classmethod
    def for_config(cls, cfg: BiDistillConfig) -> TermScales | None:
        """The scales ``cfg.balance`` asks for, or None for ``balance: none``."""
        if cfg.balance == "none":
            return None
        return cls(1.0 if cfg.balance == "start" else cfg.balance_floor)


def gradient_norms(model: Any, terms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each term's gradient norm over ``model``'s trainable weights (``balance: grad``): one backward pass per
    term, keeping the graph for the step's own; nothing is accumulated into ``.grad``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("balance: grad needs trainable weights; the model has none.")
    norms = {}
    for key, term in terms.items():
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norms[key] = torch.stack(squares).sum().sqrt() if squares else term.new_zeros(())
    return norms


def bidistill_loss(
    model: Any,
    streams: Mapping[str, Mapping[str, torch.Tensor]],
    cfg: BiDistillConfig,
    vocab_size: int,
    pad_id: int,
    eos_ids: Sequence[int],
    teacher: Any = None,
    store: TeacherTargetStore | None = None,
    prefix_caches: PrefixCaches | None = None,
    scales: TermScales | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum over streams and directions, each term divided by its scale in ``scales`` unless ``balance``
    is ``none`` (:class:`TermScales`; a fresh one for ``cfg`` when none is given). Targets come from ``teacher``
    (online: full vocabulary) or ``store`` (precomputed K'). Returns the loss and each ``<stream>_<direction>``
    term (unweighted, unscaled) for logging, with ``scale_<term>`` where balanced."""
    if (teacher is None) == (store is None):
        raise ValueError("Give exactly one of `teacher` (online) or `store` (precomputed targets).")
    target = cfg.target_config(vocab_size)
    terms: dict[str, tuple[float, torch.Tensor]] = {}
    for stream, batch in streams.items():
        weights = {d: cfg.weight(stream, d) for d in DIRECTIONS}
        if not any(weights.values()):
            continue
        targets, batch = stream_targets(
            stream, batch, target, pad_id, eos_ids, teacher=teacher, store=store, prefix_caches=prefix_caches
        )
        at = student_logits_at(model, batch)
        targets = targets.to(at.device)
        for direction, w in weights.items():
            if w == 0:
                continue
            k = cfg.top_k if direction == "pull" else cfg.push_top_k
            term = directed_loss(at, targets, direction, k, cfg.distance, cfg.huber_delta, cfg.bild_temperature)
            terms[f"{stream}_{direction}"] = (w, term)
    if not terms:
        raise ValueError(f"No stream with a non-zero weight in the batch (streams: {sorted(streams)}).")
    parts = {key: term.detach().item() for key, (_, term) in terms.items()}
    divide = {key: 1.0 for key in terms}
    if cfg.balance != "none":
        scales = scales or TermScales.for_config(cfg)
        sizes = {key: term for key, (_, term) in terms.items()}
        if cfg.balance == "grad" and not scales.values:
            sizes = gradient_norms(model, sizes)
        divide = scales.of(sizes)
        parts.update({f"scale_{key}": value for key, value in divide.items()})
    loss = sum(w * term / divide[key] for key, (w, term) in terms.items())
    return loss, parts
