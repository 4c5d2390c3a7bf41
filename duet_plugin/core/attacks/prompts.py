"""Prompt attacks: the forget question wrapped in jailbreak-style templates (``prompt_templates.yaml``).

Each template turns one question (plus, for some, other forget facts or a paraphrase) into the user turn that the
attacked model sees; the metric renders it with the model's own template (both OU template styles) and re-measures.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

TEMPLATE_FILE = Path(__file__).with_name("prompt_templates.yaml")
_SLOT = re.compile(r"{(\w+)}")
SLOTS = ("question", "examples", "paraphrase")


def template_library() -> dict[str, str]:
    """The shipped templates (``name -> text``), blank lines kept as paragraph breaks."""
    with TEMPLATE_FILE.open() as f:
        return {name: str(text).strip() for name, text in yaml.safe_load(f).items()}


def resolve_templates(names: Sequence[str] | None, custom: Mapping[str, str] | None = None) -> dict[str, str]:
    """The templates to run: ``names`` from the library and/or ``custom`` ones; each is checked for its slots."""
    library = template_library()
    chosen = dict(custom or {})
    for name in names if names is not None else list(library):
        if name not in library:
            raise ValueError(f"Unknown prompt attack template {name!r}; the library has {sorted(library)}.")
        chosen.setdefault(name, library[name])
    for name, text in chosen.items():
        slots = set(_SLOT.findall(text))
        if "question" not in slots and "paraphrase" not in slots:
            raise ValueError(f"Prompt attack template {name!r} has neither {{question}} nor {{paraphrase}}.")
        stray = slots - set(SLOTS)
        if stray:
            raise ValueError(f"Prompt attack template {name!r} has unknown slot(s) {sorted(stray)}; use {SLOTS}.")
    return chosen


def format_examples(pairs: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"Q: {q}\nA: {a}" for q, a in pairs)


def render_attack(
    template: str,
    question: str,
    examples: Sequence[tuple[str, str]] = (),
    paraphrase: str | None = None,
    name: str = "template",
) -> str:
    """The attacked user turn. ``examples`` are other (question, answer) forget facts, never the question's own."""
    slots = set(_SLOT.findall(template))
    if "examples" in slots and not examples:
        raise ValueError(f"Prompt attack {name!r} needs in-context examples (other forget questions and answers).")
    if "paraphrase" in slots and not paraphrase:
        raise ValueError(f"Prompt attack {name!r} needs a paraphrased question (TOFU: paraphrased_question).")
    values = {"question": question, "examples": format_examples(examples), "paraphrase": paraphrase or ""}
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def few_shot_examples(
    questions: Sequence[str], answers: Sequence[str], index: int, k: int = 3
) -> list[tuple[str, str]]:
    """``k`` forget facts other than item ``index`` (the next ones, cyclically) for the few-shot template."""
    n = len(questions)
    picks = [(index + j) % n for j in range(1, n)][:k]
    return [(questions[i], answers[i]) for i in picks]
