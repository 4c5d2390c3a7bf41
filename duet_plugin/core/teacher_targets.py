"""The teacher-target engine shared by the prompt-steered distillation methods (DUET, BiDistill): the teacher's
options, its greedy continuations, its top-K targets per aligned position, computed online or once into a compact
store (single process or sharded over ranks).

A method's objective asks :func:`stream_targets` for one stream batch's targets; where they come from (a live
teacher, or the store filled by :func:`precompute_targets`) is the trainer's choice (``teacher_mode``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader, Subset

from duet_plugin.core.collate import EXTRA_VIEWS, extend_with_continuations, to_device
from duet_plugin.core.distributed import all_gather_objects, is_zero3_partitioned, shard_indices, world
from duet_plugin.core.ensemble import TeacherEnsemble, TeacherSpec, average_logits, parse_teachers
from duet_plugin.core.logits import PrefixCache, logits_at
from duet_plugin.core.lora import LoRAConfig
from duet_plugin.core.losses import TopKTargets, select_topk, validate_top_k
from duet_plugin.core.options import one_of, option, positive_int
from duet_plugin.core.teacher import PrefixSpec

POSITIONS = ("first", "first_n")
TEACHER_MODES = ("precomputed", "online")


@dataclass(frozen=True)
class TargetConfig:
    """What the engine computes per query: the teacher's top ``top_k`` logits at each aligned position, after a
    greedy continuation of ``continuation_length`` tokens (0: the first response position only), ``batch_size``
    queries per teacher forward when precomputing."""

    top_k: int
    continuation_length: int = 0
    batch_size: int = 16


@dataclass
class SteeredTeacherConfig:
    """The options every prompt-steered distillation method shares: who the teacher is, how it is asked, where its
    targets are read, and how the student trains (full weights or LoRA)."""

    renamed: ClassVar[dict[str, str]] = {"teacher": "teacher_mode"}

    prefix: Any = option(
        None,
        help="What the teacher is told: {name, text, concepts, placement} or a library name (core/prefixes.yaml). "
        "name: a library prefix; text: your own instruction, {concepts} filled like the library's; concepts: what "
        "to forget (null: derived from the forget data); placement: auto | system | user.",
    )
    teachers: Any = option(
        None,
        help="Several teachers, logits averaged: [{path, prefix, weight}, ...]; path null = the starting model, "
        "prefix null = the prefix above. Null: the starting model with the prefix.",
    )
    teacher_mode: str = option(
        "precomputed",
        help="precomputed: targets from the starting weights, once, before training, for the queries the run "
        "reads | online: a frozen copy queried at every step.",
    )
    teacher_batch_size: int = option(16, help="Queries per teacher forward when precomputing the targets.")
    positions: str = option(
        "first",
        help="Response positions distilled: first (the logits predicting the first response token; the paper's) | "
        "first_n (the teacher continues num_positions tokens greedily; distilled at each).",
    )
    num_positions: int = option(8, help="first_n: tokens the teacher continues greedily.")
    lora: Any = option(
        None,
        help="Null: full fine-tuning. LoRA via peft: {r, alpha, dropout, target_modules}; the starting-model teacher "
        "is then the student with its adapters disabled (no copy), and output_dir gets the merged plain model.",
    )

    def __post_init__(self) -> None:
        self.prefix = PrefixSpec.from_config(self.prefix)
        self.teachers = parse_teachers(self.teachers, "teachers")
        for i, t in enumerate(self.teachers):
            if t.prefix is not None:
                self.teachers[i] = TeacherSpec(t.path, PrefixSpec.from_config(t.prefix), t.weight)
        one_of("teacher_mode", self.teacher_mode, TEACHER_MODES)
        positive_int("teacher_batch_size", self.teacher_batch_size)
        one_of("positions", self.positions, POSITIONS, " ('first' is the paper's)")
        if self.positions == "first_n":
            positive_int("num_positions", self.num_positions)
        self.lora = LoRAConfig.from_config(self.lora)

    @property
    def continuation_length(self) -> int:
        """How many tokens the teacher continues greedily (0 for ``first``)."""
        return self.num_positions if self.positions == "first_n" else 0

    @property
    def teacher_prefill(self) -> bool | None:
        """Whether the teacher's view of a prefilled record carries its prefill too (the student's always does);
        None leaves the collator's setting (by default it does)."""
        return None

    def target_config(self, vocab_size: int | None = None) -> TargetConfig:
        """What the engine computes for this method; with ``vocab_size`` (the model's) the K are checked against
        it first."""
        raise NotImplementedError(f"{type(self).__name__} must say what its teacher targets are (target_config).")


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def eos_ids(tokenizer: Any) -> list[int]:
    """The tokenizer's end-of-sequence id(s), where greedy continuations stop."""
    eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


@torch.no_grad()
def greedy_continuations(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int, eos_ids: Sequence[int]
) -> list[list[int]]:
    """Greedy ``n``-token continuations of right-padded prompts, each cut after its first EOS. Under ZeRO-3 every
    rank keeps stepping until all are done (``synced_gpus``), since each forward is a collective."""
    rows = [ids[m.bool()] for ids, m in zip(input_ids, attention_mask, strict=False)]
    width = max(len(r) for r in rows)
    pad = eos_ids[0] if eos_ids else 0
    left = torch.full((len(rows), width), pad, dtype=torch.long, device=input_ids.device)
    mask = torch.zeros_like(left)
    for i, r in enumerate(rows):
        left[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    out = model.generate(
        input_ids=left,
        attention_mask=mask,
        max_new_tokens=n,
        min_new_tokens=1,
        do_sample=False,
        pad_token_id=pad,
        eos_token_id=list(eos_ids) or None,
        synced_gpus=is_zero3_partitioned(model) and world()[1] > 1,
    )
    conts = []
    for row in out[:, width:].tolist():
        cut = next((j + 1 for j, tok in enumerate(row) if tok in eos_ids), len(row))
        conts.append(row[:cut])
    return conts


def _views(teacher: TeacherEnsemble, batch: Mapping[str, Any]) -> list[Mapping[str, torch.Tensor]]:
    views = [batch, *batch.get(EXTRA_VIEWS, [])]
    if max(teacher.views) >= len(views):
        raise ValueError(
            f"The teacher ensemble reads prompt view {max(teacher.views)} but the batch has {len(views)} view(s); "
            "the collator must be configured with every teacher prefix (DUETCollator.configure(extra_prefixes=...))."
        )
    return views


@torch.no_grad()
def ensemble_continuations(
    teacher: TeacherEnsemble, batch: Mapping[str, Any], n: int, eos_ids: Sequence[int], pad_id: int
) -> list[list[int]]:
    """Greedy ``n``-token continuations from the members' averaged next-token logits, each member reading its own
    prompt view (no KV cache: meant for the few tokens of ``first_n``). Each row is cut after its first EOS. Under
    ZeRO-3 all ``n`` steps run on every rank (each forward is a collective), so no rank stops early."""
    synced = is_zero3_partitioned([m for m, _, _ in teacher.members]) and world()[1] > 1
    size = batch["teacher_input_ids"].shape[0]
    conts: list[list[int]] = [[] for _ in range(size)]
    done = [False] * size
    rows = torch.arange(size, device=batch["teacher_input_ids"].device)
    for _ in range(n):
        extended = extend_with_continuations(batch, conts, pad_id) if any(conts) else batch
        views = _views(teacher, extended)
        logits = teacher.logits_for_views([(v["teacher_input_ids"], v["teacher_attention_mask"]) for v in views])
        last = [
            x[rows, views[v]["teacher_attention_mask"].sum(dim=1) - 1]
            for x, (_, v, _) in zip(logits, teacher.members, strict=True)
        ]
        for i, tok in enumerate(average_logits(last, teacher.weights).argmax(dim=-1).tolist()):
            if not done[i]:
                conts[i].append(tok)
                done[i] = tok in eos_ids
        if all(done) and not synced:
            break
    return conts


def _view_logits_at(
    model: Any, view: Mapping[str, Any], prefix: str, position_mask: torch.Tensor, cache: PrefixCache | None = None
) -> torch.Tensor:
    ids, mask = view[f"{prefix}_input_ids"], view[f"{prefix}_attention_mask"]
    return logits_at(model, ids, mask, view[f"{prefix}_positions"], position_mask, cache)


def student_logits_at(model: Any, batch: Mapping[str, Any]) -> torch.Tensor:
    """The student's logits ``[N, V]`` at the aligned positions of its (unprefixed) view."""
    return _view_logits_at(model, batch, "student", batch["position_mask"])


PrefixCaches = dict[int, PrefixCache]


def teacher_logits_at(teacher: Any, batch: Mapping[str, Any], caches: PrefixCaches | None = None) -> torch.Tensor:
    """The teacher's logits ``[N, V]`` at the aligned positions (averaged over an ensemble's members, each on its
    prompt view). With ``caches`` (one :class:`PrefixCache` per member, kept by the caller while the teacher's
    weights stay as they are) each member's shared prompt prefix is computed once; not under multi-rank ZeRO-3,
    where the one prefix forward would have to happen at the same call on every rank."""
    members = teacher.members if isinstance(teacher, TeacherEnsemble) else [(teacher, 0, 1.0)]
    if caches is not None and world()[1] > 1 and is_zero3_partitioned([m for m, _, _ in members]):
        caches = None
    views = _views(teacher, batch) if isinstance(teacher, TeacherEnsemble) else [batch]
    at = [
        _view_logits_at(
            m,
            views[v],
            "teacher",
            batch["position_mask"],
            None if caches is None else caches.setdefault(i, PrefixCache()),
        )
        for i, (m, v, _) in enumerate(members)
    ]
    return average_logits(at, teacher.weights) if isinstance(teacher, TeacherEnsemble) else at[0]


@torch.no_grad()
def teacher_targets(
    teacher: Any,
    batch: Mapping[str, Any],
    cfg: TargetConfig,
    pad_id: int,
    eos_ids: Sequence[int],
    caches: PrefixCaches | None = None,
) -> tuple[TopKTargets, dict[str, Any], list[list[int]]]:
    """The teacher's top-K targets for one collated stream batch.

    ``teacher`` is a causal LM or a :class:`TeacherEnsemble`; ``caches``: see :func:`teacher_logits_at`. Returns the
    targets (row-major over valid positions), the batch extended with the teacher's continuation (unchanged for
    ``first``) and the continuations themselves.
    """
    conts: list[list[int]] = [[] for _ in range(batch["teacher_input_ids"].shape[0])]
    if cfg.continuation_length:
        if isinstance(teacher, TeacherEnsemble):
            conts = ensemble_continuations(teacher, batch, cfg.continuation_length, eos_ids, pad_id)
        else:
            conts = greedy_continuations(
                teacher,
                batch["teacher_input_ids"],
                batch["teacher_attention_mask"],
                cfg.continuation_length,
                eos_ids,
            )
        batch = extend_with_continuations(batch, conts, pad_id)
    at = teacher_logits_at(teacher, batch, caches)
    validate_top_k(cfg.top_k, at.shape[-1])
    return select_topk(at, cfg.top_k), dict(batch), conts


class TeacherTargetStore:
    """Precomputed teacher targets, kept compactly on the CPU: per example, its continuation and K ids (int32),
    K logits and one log-normalizer (float32) per aligned position."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]]] = {}

    def add(
        self,
        stream: str,
        indices: Sequence[int],
        targets: TopKTargets,
        position_mask: torch.Tensor,
        continuations: Sequence[Sequence[int]],
    ) -> None:
        counts = position_mask.sum(dim=1).tolist()
        offsets = [0, *torch.tensor(counts).cumsum(0).tolist()]
        rows = self._rows.setdefault(stream, {})
        for i, idx in enumerate(indices):
            a, b = offsets[i], offsets[i + 1]
            rows[int(idx)] = (
                targets.indices[a:b].to("cpu", torch.int32),
                targets.values[a:b].to("cpu"),
                targets.logsumexp[a:b].to("cpu"),
                list(continuations[i]),
            )

    def lookup(self, stream: str, indices: Sequence[int]) -> tuple[TopKTargets, list[list[int]]]:
        rows = self._rows.get(stream)
        if rows is None:
            raise KeyError(f"No precomputed teacher targets for stream {stream!r} (have {sorted(self._rows)}).")
        try:
            picked = [rows[int(i)] for i in indices]
        except KeyError as err:
            raise KeyError(
                f"No precomputed teacher target for {stream} example {err.args[0]}: targets are computed for the "
                "queries the run's sampler reads (core/pairing.py), and this one was not among them (a sampler "
                "other than the trainer's?). teacher_mode=online computes every target as it is read."
            ) from None
        targets = TopKTargets(
            torch.cat([p[0] for p in picked]).long(),
            torch.cat([p[1] for p in picked]),
            torch.cat([p[2] for p in picked]),
        )
        return targets, [p[3] for p in picked]

    def merge(self, other: TeacherTargetStore) -> None:
        """Add ``other``'s rows (an example present in both keeps ``other``'s, which is the same target)."""
        for stream, rows in other._rows.items():
            self._rows.setdefault(stream, {}).update(rows)

    def __len__(self) -> int:
        return sum(len(r) for r in self._rows.values())

    def streams(self) -> list[str]:
        return sorted(self._rows)

    def nbytes(self) -> int:
        """Bytes held by the stored tensors (continuations excluded)."""
        return sum(
            t.numel() * t.element_size() for rows in self._rows.values() for row in rows.values() for t in row[:3]
        )


@torch.no_grad()
def precompute_targets(
    model: Any,
    streams: Mapping[str, Any],
    collate_fn: Any,
    cfg: TargetConfig,
    pad_id: int,
    eos_ids: Sequence[int],
    context: Any = contextlib.nullcontext,
    indices: Mapping[str, Sequence[int]] | None = None,
) -> TeacherTargetStore:
    """Teacher targets for the queries of every stream dataset (items carry ``index``), from ``model`` as it is:
    those of ``indices[stream]`` where given (the queries training reads, ``core/pairing.py``), else all.

    ``context`` is entered around each teacher forward (e.g. the trainer's autocast), so the targets have the
    precision an online teacher would have. With several processes (``torch.distributed``) each rank computes an
    equal share of the queries (:func:`shard_indices`) and the shares are gathered, so every target is computed
    once and every rank ends with the whole store (any rank's sampler may draw any query in a later epoch).
    """
    rank, world_size = world()
    store = TeacherTargetStore()
    was_training = model.training
    model.eval()
    device = _model_device(model)
    caches: PrefixCaches = {}  # the model's weights stay as they are during this call
    for stream, dataset in streams.items():
        if indices is not None:
            dataset = Subset(dataset, list(indices.get(stream, [])))
        share = Subset(dataset, shard_indices(len(dataset), rank, world_size)) if world_size > 1 else dataset
        for batch in DataLoader(share, batch_size=cfg.batch_size, collate_fn=collate_fn):
            batch = to_device(batch, device)
            with context():
                targets, extended, conts = teacher_targets(model, batch, cfg, pad_id, eos_ids, caches)
            store.add(stream, batch["index"].tolist(), targets, extended["position_mask"], conts)
    model.train(was_training)
    if world_size > 1:
        merged = TeacherTargetStore()
        for share in all_gather_objects(store):
            merged.merge(share)
        store = merged
    return store


def stream_targets(
    stream: str,
    batch: Mapping[str, Any],
    cfg: TargetConfig,
    pad_id: int,
    eos_ids: Sequence[int],
    teacher: Any = None,
    store: TeacherTargetStore | None = None,
    prefix_caches: PrefixCaches | None = None,
) -> tuple[TopKTargets, Mapping[str, Any]]:
    """One stream batch's teacher targets, online (``teacher``, with its ``prefix_caches``: see
    :func:`teacher_logits_at`) or looked up in ``store``, and the batch extended with the teacher's continuation
    (``first_n``)."""
    if teacher is not None:
        targets, batch, _ = teacher_targets(teacher, batch, cfg, pad_id, eos_ids, prefix_caches)
        return targets, batch
    targets, conts = store.lookup(stream, batch["index"].tolist())
    if cfg.continuation_length:
        batch = extend_with_continuations(batch, conts, pad_id)
    return targets, batch
