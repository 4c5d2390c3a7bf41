"""Collation of unified records into aligned teacher/student tensors.

For every record the collator renders the student view (query only) and the teacher view (prefix + query) with
:class:`~duet_plugin.core.teacher.PromptRenderer`, pads both on the right, and records the *aligned positions*:
the index in each view whose logits predict the same next token (``first``: the last prompt token, which
predicts the first response token). A record's ``prefill`` (the start of an answer, for the adversarial stream) is
appended to both views after the generation prompt, so the aligned position is the one after the prefill.
:func:`extend_with_continuations` appends the same token continuation to both views (``first_n``: the teacher's
greedy continuation) and extends the aligned positions over it.

Batches nest like OU's: ``{"forget": {...}, "retain": {...}}`` when the dataset yields one record per stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from duet_plugin.core.teacher import PromptRenderer, TemplateArgs

VIEW_KEYS = (
    "student_input_ids",
    "student_attention_mask",
    "teacher_input_ids",
    "teacher_attention_mask",
    "student_positions",
    "teacher_positions",
    "position_mask",
)
#: The keys of one teacher view; a batch's further views (other prefixes) sit under ``EXTRA_VIEWS`` as a list.
TEACHER_VIEW_KEYS = ("teacher_input_ids", "teacher_attention_mask", "teacher_positions")
EXTRA_VIEWS = "extra_teacher_views"


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into ``[B, L]`` ids and a length-based attention mask (pad ids inside a sequence,
    e.g. an EOS that doubles as pad, stay attended)."""
    if not seqs:
        raise ValueError("Cannot collate an empty batch.")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def views_from_ids(
    student: Sequence[Sequence[int]],
    teacher: Sequence[Sequence[int]],
    pad_id: int,
    continuations: Sequence[Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Aligned views from prompt ids, optionally followed by a continuation shared by both views.

    Position ``j`` of row ``i`` predicts continuation token ``j`` (``j = 0`` is the first response token); with no
    continuation there is exactly one position, the last prompt token.
    """
    if len(student) != len(teacher):
        raise ValueError("student and teacher views must have the same batch size.")
    conts = [list(c) for c in continuations] if continuations is not None else [[] for _ in student]
    n_pos = max(1, max(len(c) for c in conts))
    s_ids, s_mask = pad_right([list(s) + c for s, c in zip(student, conts, strict=False)], pad_id)
    t_ids, t_mask = pad_right([list(t) + c for t, c in zip(teacher, conts, strict=False)], pad_id)
    s_pos = torch.zeros((len(student), n_pos), dtype=torch.long)
    t_pos = torch.zeros_like(s_pos)
    valid = torch.zeros((len(student), n_pos), dtype=torch.bool)
    for i, (s, t, c) in enumerate(zip(student, teacher, conts, strict=False)):
        n = max(1, len(c))
        s_pos[i, :n] = torch.arange(len(s) - 1, len(s) - 1 + n)
        t_pos[i, :n] = torch.arange(len(t) - 1, len(t) - 1 + n)
        valid[i, :n] = True
    return {
        "student_input_ids": s_ids,
        "student_attention_mask": s_mask,
        "teacher_input_ids": t_ids,
        "teacher_attention_mask": t_mask,
        "student_positions": s_pos,
        "teacher_positions": t_pos,
        "position_mask": valid,
    }


def _rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=False)]


def extend_with_continuations(
    batch: Mapping[str, Any], continuations: Sequence[Sequence[int]], pad_id: int
) -> dict[str, Any]:
    """Append a per-row continuation to every view of a collated leaf batch (``first_n`` positions)."""
    student = _rows(batch["student_input_ids"], batch["student_attention_mask"])
    out = dict(batch)
    out.update(
        views_from_ids(
            student, _rows(batch["teacher_input_ids"], batch["teacher_attention_mask"]), pad_id, continuations
        )
    )
    if batch.get(EXTRA_VIEWS):
        out[EXTRA_VIEWS] = [
            {
                k: v
                for k, v in views_from_ids(
                    student, _rows(view["teacher_input_ids"], view["teacher_attention_mask"]), pad_id, continuations
                ).items()
                if k in TEACHER_VIEW_KEYS
            }
            for view in batch[EXTRA_VIEWS]
        ]
    return to_device(out, batch["student_input_ids"].device)


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def gather_positions(logits: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logits [B, L, V]`` at ``positions [B, P]`` where ``mask [B, P]`` -> ``[N, V]`` (row-major order)."""
    rows = torch.arange(logits.shape[0], device=logits.device).unsqueeze(-1).expand_as(positions)
    return logits[rows[mask], positions[mask]]


class TeacherStudentCollator:
    """Collates unified records (dicts with at least ``prompt``) into aligned teacher/student tensors.

    Args:
        tokenizer: the model's tokenizer (its ``pad_token_id`` pads; falls back to ``eos_token_id``).
        template_args: OU's ``model.template_args``.
        prefix: the rendered teacher prefix text; ``None`` makes the teacher view equal the student view.
        placement: where the prefix goes (``auto``, ``system``, ``user``); see ``PromptRenderer``.
        extra_prefixes: further teacher prefixes (several-teacher DUET); each adds one view under ``EXTRA_VIEWS``.
        teacher_prefill: whether teacher views of *adversarial* records carry their prefill too (``True``: the
            teacher continues the same forced start; ``False``: the teacher answers the bare question, so after a
            forbidden start the student is aligned with the teacher's response start). Prefilled records of other
            streams (allowed starts, e.g. retain answers) always carry it in both views.
    """

    def __init__(
        self,
        tokenizer: Any,
        template_args: Mapping[str, Any] | TemplateArgs | None = None,
        prefix: str | None = None,
        placement: str = "auto",
        extra_prefixes: Sequence[str] = (),
        teacher_prefill: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.teacher_prefill = teacher_prefill
        self.template_args = template_args
        self.placement = placement
        self.prefix = prefix
        self.extra_prefixes = list(extra_prefixes)
        self._renderer: PromptRenderer | None = None

    @property
    def renderer(self) -> PromptRenderer:
        if self._renderer is None:
            if self.template_args is None:
                raise ValueError("The DUET collator has no template_args; pass model.template_args.")
            self._renderer = PromptRenderer(self.tokenizer, self.template_args, self.placement)
        return self._renderer

    def configure(
        self,
        template_args: Mapping[str, Any] | TemplateArgs | None = None,
        prefix: str | None = None,
        placement: str | None = None,
        extra_prefixes: Sequence[str] = (),
        teacher_prefill: bool | None = None,
    ) -> TeacherStudentCollator:
        """Set what the trainer resolved (template args it was given, the final prefix texts)."""
        if teacher_prefill is not None:
            self.teacher_prefill = teacher_prefill
        if template_args is not None:
            self.template_args = template_args
        if placement is not None:
            self.placement = placement
        self.prefix = prefix
        self.extra_prefixes = list(extra_prefixes)
        self._renderer = None
        return self

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def view_ids(self, record: Mapping[str, Any], prefix: str | None = None, with_prefill: bool = True) -> list[int]:
        """One view's ids: the rendered prompt (with ``prefix`` for a teacher view), then the record's prefill
        (unless ``with_prefill`` is false)."""
        ids = self.renderer.prompt_ids(record["prompt"], prefix)
        if not with_prefill:
            return ids
        prefill = record.get("prefill")
        if prefill is not None and not isinstance(prefill, str):
            what = type(prefill).__name__
            raise ValueError(f"A record's prefill must be the start of the answer as text, not {what}.")
        if prefill:
            ids += list(self.tokenizer(prefill, add_special_tokens=False)["input_ids"])
        return ids

    def __call__(self, instances: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not instances:
            raise ValueError("Cannot collate an empty batch.")
        if "prompt" not in instances[0]:
            return {key: self([inst[key] for inst in instances]) for key in instances[0]}
        student = [self.view_ids(inst) for inst in instances]
        keep = [self.teacher_prefill or inst.get("stream") != "adversarial" for inst in instances]
        same = self.prefix is None and all(keep)
        teacher = student if same else [self.view_ids(i, self.prefix, k) for i, k in zip(instances, keep, strict=True)]
        batch: dict[str, Any] = views_from_ids(student, teacher, self.pad_id)
        if self.extra_prefixes:
            batch[EXTRA_VIEWS] = [
                {
                    k: v
                    for k, v in views_from_ids(
                        student, [self.view_ids(i, p, k) for i, k in zip(instances, keep, strict=True)], self.pad_id
                    ).items()
                    if k in TEACHER_VIEW_KEYS
                }
                for p in self.extra_prefixes
            ]
        if "index" in instances[0]:
            batch["index"] = torch.tensor([int(inst["index"]) for inst in instances], dtype=torch.long)
        return batch
