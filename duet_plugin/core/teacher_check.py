"""Before training: does the prompt-steered teacher do what DUET needs of it on this model and prefix? After
training: how much of the way from the starting model to that teacher did the student go?

DUET's student can only become what its teacher is: the starting model with the unlearning prefix in front of the
query. :func:`check_teacher` asks the model each forget and retain query twice, greedily, without and with the
prefix, and reports how often each answer is a refusal, how often the prefixed retain answers agree with the
unprefixed ones, and a verdict in words. It costs two short generations per query, so it runs in minutes on a small
model. :func:`distillation_fidelity` measures DUET's own job whatever the teacher's quality: at the position that
predicts the first response token, the KL from the teacher (over its top-K tokens plus one bucket for the rest) to
the starting model and to the student, the share of that gap the student closed, and top-1 agreement.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from duet_plugin.core.attacks.refusal import is_refusal, normalize
from duet_plugin.core.losses import select_topk, topk_tail_kl
from duet_plugin.core.teacher import PromptRenderer
from duet_plugin.core.teacher_targets import eos_ids, greedy_continuations

#: A prefix must raise the forget refusal rate by this much to count as doing anything.
MIN_LIFT = 0.2
#: Above this prefixed retain refusal rate the teacher over-refuses what must be kept.
MAX_RETAIN_REFUSAL = 0.2


@dataclass
class TeacherCheck:
    """Refusal rates without (``base_*``) and with (``teacher_*``) the prefix, retain agreement, examples."""

    prefix: str
    base_forget_refusal: float
    teacher_forget_refusal: float
    base_retain_refusal: float
    teacher_retain_refusal: float
    retain_agreement: float  # share of retain queries whose prefixed answer starts like the unprefixed one
    # Among forget queries that do not name a concept (in full or by its last word), the share of answers that do
    # (None: every query names one)
    base_forget_mentions: float | None = None
    teacher_forget_mentions: float | None = None
    examples: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # stream -> (query, base, teacher)

    @property
    def verdict(self) -> str:
        """``works``, ``over-refuses``, ``inverted``, ``inert`` or ``weak``."""
        forget_lift = self.teacher_forget_refusal - self.base_forget_refusal
        retain_lift = self.teacher_retain_refusal - self.base_retain_refusal
        if forget_lift < MIN_LIFT and retain_lift < MIN_LIFT:
            return "inert"
        if retain_lift >= forget_lift:
            return "inverted"
        if self.teacher_retain_refusal > MAX_RETAIN_REFUSAL:
            return "over-refuses"
        return "works" if self.teacher_forget_refusal >= 0.5 else "weak"

    def explain(self) -> str:
        """The verdict in a sentence."""
        f = f"{self.base_forget_refusal:.0%} -> {self.teacher_forget_refusal:.0%}"
        r = f"{self.base_retain_refusal:.0%} -> {self.teacher_retain_refusal:.0%}"
        leak = ""
        base, steered = self.base_forget_mentions, self.teacher_forget_mentions
        if base is not None and steered is not None and steered - base >= MIN_LIFT:
            leak = (
                f"; and it leaks: answers to forget queries that do not name a concept name one {base:.0%} -> "
                f"{steered:.0%} of the time"
            )
        return {
            "works": f"works: refuses the forget queries ({f}) and keeps the retain ones ({r} refusals)",
            "weak": f"weak: the prefix raises forget refusals ({f}) but most forget queries are still answered",
            "over-refuses": f"over-refuses: forget refusals {f}, but retain refusals {r} too",
            "inverted": f"inverted: the prefix raises retain refusals ({r}) at least as much as forget ones ({f})",
            "inert": f"inert: the prefix barely changes refusals (forget {f}, retain {r})",
        }[self.verdict] + leak


def names_a_concept(text: str, concepts: Sequence[str]) -> bool:
    """Whether ``text`` names one of ``concepts``, in full or by its last word ("Okafor's novels")."""
    words = set(re.findall(r"[\w\-]+", normalize(text)))
    head = normalize(text)
    return any(normalize(c) in head or normalize(c).split()[-1] in words for c in concepts if c.strip())


def _starts_alike(a: str, b: str, words: int = 6) -> bool:
    return normalize(a).split()[:words] == normalize(b).split()[:words]


def _right_padded(
    model: Any, renderer: PromptRenderer, queries: Sequence[str], prefix: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts of ``queries`` (in the view of ``prefix``), right-padded, and their attention mask."""
    rows = [renderer.prompt_ids(q, prefix) for q in queries]
    ids = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long, device=next(model.parameters()).device)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


@torch.no_grad()
def answers(
    model: Any,
    renderer: PromptRenderer,
    queries: Sequence[str],
    prefix: str | None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> list[str]:
    """Greedy answers to ``queries`` (with ``prefix`` in front, as DUET's teacher sees them)."""
    tokenizer = renderer.tokenizer
    eos = eos_ids(tokenizer)
    out = []
    for start in range(0, len(queries), batch_size):
        ids, mask = _right_padded(model, renderer, queries[start : start + batch_size], prefix)
        conts = greedy_continuations(model, ids, mask, max_new_tokens, eos)
        out += [tokenizer.decode(c, skip_special_tokens=True).strip() for c in conts]
    return out


def check_teacher(
    model: Any,
    renderer: PromptRenderer,
    prefix_name: str,
    prefix: str,
    forget: Sequence[str],
    retain: Sequence[str],
    base: dict[str, list[str]] | None = None,
    concepts: Sequence[str] = (),
    **generation: Any,
) -> TeacherCheck:
    """Run the check for one prefix; ``base`` (answers without a prefix, per stream) is reused across prefixes.
    ``concepts`` (what the prefix names) are looked for in the forget answers."""
    if not forget or not retain:
        raise ValueError("The teacher check needs forget and retain queries (one or more of each).")
    base = base if base is not None else {}
    for stream, queries in (("forget", forget), ("retain", retain)):
        if stream not in base:
            base[stream] = answers(model, renderer, queries, None, **generation)
    teacher = {"forget": answers(model, renderer, forget, prefix, **generation)}
    teacher["retain"] = answers(model, renderer, retain, prefix, **generation)

    def rate(texts: list[str]) -> float:
        return sum(map(is_refusal, texts)) / len(texts)

    unnamed = [i for i, q in enumerate(forget) if not names_a_concept(q, concepts)]

    def mentions(texts: list[str]) -> float | None:
        if not concepts or not unnamed:
            return None
        return sum(names_a_concept(texts[i], concepts) for i in unnamed) / len(unnamed)

    agree = sum(map(_starts_alike, base["retain"], teacher["retain"])) / len(retain)
    examples = {}
    for stream, queries in (("forget", forget), ("retain", retain)):
        # a refused query shows the prefix at work (forget) or at fault (retain); else the first query
        i = next((i for i, t in enumerate(teacher[stream]) if is_refusal(t)), 0)
        examples[stream] = (queries[i], base[stream][i], teacher[stream][i])
    return TeacherCheck(
        prefix=prefix_name,
        base_forget_refusal=rate(base["forget"]),
        teacher_forget_refusal=rate(teacher["forget"]),
        base_retain_refusal=rate(base["retain"]),
        teacher_retain_refusal=rate(teacher["retain"]),
        retain_agreement=agree,
        base_forget_mentions=mentions(base["forget"]),
        teacher_forget_mentions=mentions(teacher["forget"]),
        examples=examples,
    )


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


@dataclass
class Fidelity:
    """Teacher -> starting model and teacher -> student, at the first response position of ``n`` queries."""

    queries: str  # which queries (trained forget, held-out retain, ...)
    n: int
    kl_base: float  # mean KL(teacher || starting model) over the teacher's top-K plus a tail bucket
    kl_student: float  # the same to the student
    top1_base: float  # share of queries where the starting model's top token is the teacher's
    top1_student: float

    @property
    def closed(self) -> float:
        """The share of the starting model's distance to the teacher that the student closed (1: all of it)."""
        return 1.0 - self.kl_student / self.kl_base if self.kl_base > 0 else float("nan")


@torch.no_grad()
def first_response_logits(
    model: Any, renderer: PromptRenderer, queries: Sequence[str], prefix: str | None, batch_size: int = 8
) -> torch.Tensor:
    """``[N, V]`` logits that predict the first response token of each query (prompt in the view of ``prefix``)."""
    out = []
    for start in range(0, len(queries), batch_size):
        ids, mask = _right_padded(model, renderer, queries[start : start + batch_size], prefix)
        logits = model(input_ids=ids, attention_mask=mask).logits
        last = mask.sum(dim=1) - 1
        out.append(logits[torch.arange(len(ids), device=ids.device), last].float().cpu())
    return torch.cat(out)


def distillation_fidelity(
    base: Any,
    student: Any,
    renderer: PromptRenderer,
    prefix: str,
    queries: Sequence[str],
    label: str,
    top_k: int = 10,
) -> Fidelity:
    """How far ``student`` (unprefixed) moved from ``base`` (unprefixed) towards ``base`` with ``prefix``."""
    if not queries:
        raise ValueError(f"No {label} queries to measure distillation fidelity on.")
    teacher = first_response_logits(base, renderer, queries, prefix)
    targets = select_topk(teacher, top_k)
    start = first_response_logits(base, renderer, queries, None)
    trained = first_response_logits(student, renderer, queries, None)
    top1 = teacher.argmax(-1)
    return Fidelity(
        queries=label,
        n=len(queries),
        kl_base=topk_tail_kl(start, targets).mean().item(),
        kl_student=topk_tail_kl(trained, targets).mean().item(),
        top1_base=(start.argmax(-1) == top1).float().mean().item(),
        top1_student=(trained.argmax(-1) == top1).float().mean().item(),
    )


def render_fidelity(rows: Sequence[Fidelity], top_k: int = 10) -> str:
    head = (
        f"| queries | n | KL to teacher (top-{top_k} + tail): start -> student | gap closed "
        "| top-1 = teacher's: start -> student |"
    )
    body = [
        f"| {f.queries} | {f.n} | {f.kl_base:.3f} -> {f.kl_student:.3f} | {f.closed:.0%} "
        f"| {f.top1_base:.2f} -> {f.top1_student:.2f} |"
        for f in rows
    ]
    return "\n".join([head, "|---|---|---|---|---|", *body])


def render_table(checks: Sequence[TeacherCheck]) -> str:
    """A markdown table: one row per prefix."""
    head = (
        "| prefix | forget refusals (no prefix -> prefix) | retain refusals (no prefix -> prefix) "
        "| retain answers unchanged | answers naming a concept the forget query did not | verdict |"
    )
    rows = [
        f"| {c.prefix} | {c.base_forget_refusal:.2f} -> {c.teacher_forget_refusal:.2f} "
        f"| {c.base_retain_refusal:.2f} -> {c.teacher_retain_refusal:.2f} | {c.retain_agreement:.2f} "
        f"| {_rate(c.base_forget_mentions)} -> {_rate(c.teacher_forget_mentions)} | {c.verdict} |"
        for c in checks
    ]
    return "\n".join([head, "|---|---|---|---|---|---|", *rows])
