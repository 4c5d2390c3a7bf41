"""Prompt attacks: the forget question wrapped in adversarial probe templates (``prompt_templates.yaml``).

Each template turns one question (plus, for some, other forget facts, a paraphrase or answer options) into the user
turn that the attacked model sees; the metric renders it with the model's own template (both OU template styles) and
re-measures. Every template belongs to a ``family``: the nine adversarial probe types of RWKU (Jin et al., 2024)
plus ``none``, the unattacked question.

A library entry is either a plain string (its own family, named like the template) or a mapping
``{text: ..., family: ...}``; custom templates take the same two forms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_FILE = Path(__file__).with_name("prompt_templates.yaml")
_SLOT = re.compile(r"{(\w+)}")
SLOTS = ("question", "examples", "paraphrase", "background", "options", "masked_answer")
#: Slots one of which a template must have: what identifies the forget fact being probed.
QUERY_SLOTS = ("question", "paraphrase", "masked_answer")
#: Slots that put (part of) the scored answer into the prompt: such templates have a copying floor (a model that
#: never knew the fact still scores on the words it can copy), so the headline worst case leaves them out.
ANSWER_SLOTS = ("options", "masked_answer")
#: RWKU's nine adversarial probe types (forget_level3 ``type``), in the paper's order.
FAMILIES = (
    "prefix_injection",
    "affirmative_suffix",
    "role_play",
    "multiple_choice",
    "reverse_query",
    "synonym_manipulation",
    "background_hint",
    "in_context_learning",
    "cross_lingual",
)
MASK = "___"


@dataclass(frozen=True)
class Probe:
    """One template: its text and its probe family."""

    text: str
    family: str

    @property
    def slots(self) -> set[str]:
        return set(_SLOT.findall(self.text))

    @property
    def answer_in_prompt(self) -> bool:
        return bool(self.slots & set(ANSWER_SLOTS))


def _probe(name: str, entry: Any) -> Probe:
    if isinstance(entry, str):
        return Probe(entry.strip(), name)
    if isinstance(entry, Mapping) and "text" in entry and set(entry) <= {"text", "family"}:
        return Probe(str(entry["text"]).strip(), str(entry.get("family") or name))
    raise ValueError(f"Prompt attack template {name!r} must be a string or {{text: ..., family: ...}}; got {entry!r}.")


def probe_library() -> dict[str, Probe]:
    """The shipped templates (``name -> Probe``), blank lines kept as paragraph breaks."""
    with TEMPLATE_FILE.open() as f:
        return {name: _probe(name, entry) for name, entry in yaml.safe_load(f).items()}


def template_library() -> dict[str, str]:
    """The shipped templates' texts (``name -> text``)."""
    return {name: p.text for name, p in probe_library().items()}


def template_families() -> dict[str, str]:
    """The shipped templates' families (``name -> family``)."""
    return {name: p.family for name, p in probe_library().items()}


def _check(name: str, probe: Probe) -> None:
    slots = probe.slots
    if not slots & set(QUERY_SLOTS):
        raise ValueError(f"Prompt attack template {name!r} has none of {{question}} {{paraphrase}} {{masked_answer}}.")
    stray = slots - set(SLOTS)
    if stray:
        raise ValueError(f"Prompt attack template {name!r} has unknown slot(s) {sorted(stray)}; use {SLOTS}.")


def resolve_probes(
    names: Sequence[str] | None,
    custom: Mapping[str, Any] | None = None,
    families: Sequence[str] | None = None,
) -> dict[str, Probe]:
    """The templates to run: ``names`` and every template of ``families`` from the library, plus ``custom`` ones.

    With neither ``names`` nor ``families``, every library template but ``none`` (the unattacked question, which
    the metric measures anyway). Each template is checked for its slots."""
    library = probe_library()
    chosen = {name: _probe(name, entry) for name, entry in (custom or {}).items()}
    if names is None and families is None:
        names = [n for n in library if n != "none"]
    for name in names or ():
        if name not in library:
            raise ValueError(f"Unknown prompt attack template {name!r}; the library has {sorted(library)}.")
        chosen.setdefault(name, library[name])
    known = sorted({p.family for p in library.values()})
    for family in families or ():
        members = [n for n, p in library.items() if p.family == family]
        if not members:
            raise ValueError(f"Unknown prompt attack family {family!r}; the library has {known}.")
        for name in members:
            chosen.setdefault(name, library[name])
    for name, probe in chosen.items():
        _check(name, probe)
    return chosen


def resolve_templates(
    names: Sequence[str] | None, custom: Mapping[str, Any] | None = None, families: Sequence[str] | None = None
) -> dict[str, str]:
    """:func:`resolve_probes`, texts only."""
    return {name: p.text for name, p in resolve_probes(names, custom, families).items()}


def format_examples(pairs: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"Q: {q}\nA: {a}" for q, a in pairs)


def format_options(options: Sequence[str]) -> str:
    return "\n".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options))


def mask_answer(answer: str, question: str) -> str:
    """The answer with every word that also occurs in the question replaced by ``___``: what is left is what the
    answer adds (e.g. the place, the book), and the subject the question names must be recalled (reverse query)."""
    asked = {w.lower() for w in re.findall(r"\w+", question)}
    return re.sub(r"\w+", lambda m: MASK if m.group(0).lower() in asked else m.group(0), answer)


def render_attack(
    template: str,
    question: str,
    examples: Sequence[tuple[str, str]] = (),
    paraphrase: str | None = None,
    name: str = "template",
    answer: str | None = None,
    options: Sequence[str] = (),
) -> str:
    """The attacked user turn. ``examples`` are other (question, answer) forget facts, never the question's own;
    ``options`` the multiple-choice options (the true answer among them); ``answer`` the question's own answer
    (for ``{masked_answer}``)."""
    slots = set(_SLOT.findall(template))
    if slots & {"examples", "background"} and not examples:
        raise ValueError(f"Prompt attack {name!r} needs in-context examples (other forget questions and answers).")
    if "paraphrase" in slots and not paraphrase:
        raise ValueError(f"Prompt attack {name!r} needs a paraphrased question (TOFU: paraphrased_question).")
    if "options" in slots and len(options) < 2:
        raise ValueError(f"Prompt attack {name!r} needs answer options (the answer and other forget answers).")
    if "masked_answer" in slots and not answer:
        raise ValueError(f"Prompt attack {name!r} needs the question's answer (to mask what the question names).")
    values = {
        "question": question,
        "examples": format_examples(examples),
        "paraphrase": paraphrase or "",
        "background": "\n".join(a for _, a in examples),
        "options": format_options(options),
        "masked_answer": mask_answer(answer, question) if answer else "",
    }
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def few_shot_examples(
    questions: Sequence[str], answers: Sequence[str], index: int, k: int = 3
) -> list[tuple[str, str]]:
    """``k`` forget facts other than item ``index`` (the next ones, cyclically) for the few-shot template."""
    n = len(questions)
    picks = [(index + j) % n for j in range(1, n)][:k]
    return [(questions[i], answers[i]) for i in picks]


def choice_options(answers: Sequence[str], index: int, choices: int = 4) -> list[str]:
    """Item ``index``'s answer among ``choices - 1`` distractors (the next distinct answers, cyclically); the true
    answer sits at position ``index % choices`` (deterministic, balanced over the letters)."""
    true = answers[index]
    distractors: list[str] = []
    for j in range(1, len(answers)):
        other = answers[(index + j) % len(answers)]
        if other != true and other not in distractors:
            distractors.append(other)
        if len(distractors) == choices - 1:
            break
    at = index % (len(distractors) + 1)
    return [*distractors[:at], true, *distractors[at:]]


def render_rows(
    template: str,
    questions: Sequence[str],
    answers: Sequence[str],
    paraphrases: Sequence[str] | None = None,
    few_shot_k: int = 3,
    choices: int = 4,
    name: str = "template",
) -> list[str]:
    """Every row's attacked user turn, with the other rows as examples, background and answer options."""
    slots = set(_SLOT.findall(template))
    return [
        render_attack(
            template,
            q,
            examples=few_shot_examples(questions, answers, i, k=few_shot_k)
            if slots & {"examples", "background"}
            else (),
            paraphrase=paraphrases[i] if paraphrases is not None else None,
            name=name,
            answer=answers[i],
            options=choice_options(answers, i, choices) if "options" in slots else (),
        )
        for i, q in enumerate(questions)
    ]


def family_summary(
    probes: Mapping[str, Probe],
    by_attack: Mapping[str, Mapping[str, float | None]],
    first: str,
    higher_is_worse: bool = True,
) -> dict[str, Any]:
    """Per family: each child's worst value over the family's templates and the template worst on ``first``."""
    pick = max if higher_is_worse else min
    value_by_family: dict[str, dict[str, float]] = {}
    worst_template: dict[str, str] = {}
    for family in dict.fromkeys(p.family for p in probes.values()):
        members = [n for n, p in probes.items() if p.family == family and n in by_attack]
        if not members:
            continue
        children = dict.fromkeys(c for n in members for c in by_attack[n])
        value_by_family[family] = {}
        for child in children:
            vals = [by_attack[n][child] for n in members if by_attack[n].get(child) is not None]
            if vals:
                value_by_family[family][child] = pick(vals)
        scored = [n for n in members if by_attack[n].get(first) is not None]
        if scored:
            worst_template[family] = pick(scored, key=lambda n: by_attack[n][first])
    return {"value_by_family": value_by_family, "worst_template_by_family": worst_template}
