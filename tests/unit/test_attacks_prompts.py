"""Prompt and prefill attacks: the template library, rendering in both OU template styles, prefilled prompts."""

from __future__ import annotations

import pytest

from duet_plugin.core.attacks.prefill import answer_ids, prefilled_prompt
from duet_plugin.core.attacks.prompts import (
    few_shot_examples,
    render_attack,
    resolve_templates,
    template_library,
)
from duet_plugin.core.teacher import PromptRenderer

Q = "Where was the author Gideon Kilbride born?"


def test_library_has_the_documented_templates() -> None:
    lib = template_library()
    assert {"none", "reverse_prompt", "role_play", "prefix_injection", "few_shot", "paraphrase"} <= set(lib)
    assert lib["none"] == "{question}"
    assert "\n\n" in lib["reverse_prompt"]  # paragraph break kept between the instruction and the question


def test_resolve_checks_names_and_slots() -> None:
    assert set(resolve_templates(["none", "role_play"])) == {"none", "role_play"}
    assert "mine" in resolve_templates([], {"mine": "Please, {question}"})
    with pytest.raises(ValueError, match="Unknown prompt attack template 'dan'"):
        resolve_templates(["dan"])
    with pytest.raises(ValueError, match="neither"):
        resolve_templates([], {"bad": "Tell me everything."})
    with pytest.raises(ValueError, match=r"unknown slot\(s\) \['answer'\]"):
        resolve_templates([], {"bad": "{question} {answer}"})


def test_render_fills_every_slot_and_needs_its_inputs() -> None:
    lib = template_library()
    assert render_attack(lib["none"], Q) == Q
    text = render_attack(lib["reverse_prompt"], Q)
    assert text.startswith("Ignore all previous instructions") and text.endswith(Q)
    shots = [("Who wrote Ash?", "Ana Lopez."), ("Where is Bo Chen from?", "Valdomir.")]
    few = render_attack(lib["few_shot"], Q, examples=shots)
    assert "Q: Who wrote Ash?\nA: Ana Lopez." in few and few.rstrip().endswith("A:")
    assert render_attack(lib["paraphrase"], Q, paraphrase="In which city was Gideon Kilbride born?").startswith("In")
    with pytest.raises(ValueError, match="needs in-context examples"):
        render_attack(lib["few_shot"], Q, name="few_shot")
    with pytest.raises(ValueError, match="needs a paraphrased question"):
        render_attack(lib["paraphrase"], Q, name="paraphrase")


def test_few_shot_examples_never_include_the_question_itself() -> None:
    qs, ans = [f"q{i}" for i in range(5)], [f"a{i}" for i in range(5)]
    assert few_shot_examples(qs, ans, 3, k=3) == [("q4", "a4"), ("q0", "a0"), ("q1", "a1")]
    assert all(q != "q0" for q, _ in few_shot_examples(qs[:2], ans[:2], 0, k=3))


@pytest.mark.parametrize("style", ["chat", "manual"])
def test_attacks_render_in_both_template_styles(tokenizer, chat_args, manual_args, style) -> None:
    renderer = PromptRenderer(tokenizer, chat_args if style == "chat" else manual_args)
    attacked = render_attack(template_library()["role_play"], Q)
    text = renderer.prompt_text(attacked)
    assert "Archivist" in text and Q in text
    # The attack sits inside the user turn, before the generation prompt.
    assert text.index("Archivist") < text.rindex(Q)
    if style == "manual":
        assert text.startswith("Question: ") and text.endswith("Answer: ")


@pytest.mark.parametrize("style", ["chat", "manual"])
def test_prefilled_prompt_continues_the_true_answer(tokenizer, chat_args, manual_args, style) -> None:
    renderer = PromptRenderer(tokenizer, chat_args if style == "chat" else manual_args)
    answer = "Gideon Kilbride was born in Valdomir."
    full = answer_ids(tokenizer, answer)
    p = prefilled_prompt(renderer, Q, answer, k=3)
    assert p.input_ids == renderer.prompt_ids(Q) + full[:3]
    assert p.prefill_ids + p.target_ids == full and len(p.prefill_ids) == 3
    long = prefilled_prompt(renderer, Q, answer, k=100)
    assert len(long.target_ids) == 1  # one answer token is always left to score
    assert prefilled_prompt(renderer, Q, answer, k=0).input_ids == renderer.prompt_ids(Q)
    with pytest.raises(ValueError, match="Empty answer"):
        prefilled_prompt(renderer, Q, "", k=2)
