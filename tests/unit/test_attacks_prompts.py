"""Prompt and prefill attacks: the template library, rendering in both OU template styles, prefilled prompts."""

from __future__ import annotations

import pytest

from duet_plugin.core.attacks.prefill import answer_ids, prefilled_prompt
from duet_plugin.core.attacks.prompts import (
    ANSWER_SLOTS,
    FAMILIES,
    SLOTS,
    Probe,
    choice_options,
    family_summary,
    few_shot_examples,
    mask_answer,
    probe_library,
    render_attack,
    render_rows,
    resolve_probes,
    resolve_templates,
    template_families,
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
    with pytest.raises(ValueError, match="has none of"):
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


# -- the probe families (RWKU's nine adversarial probe types) -------------------------------------------------------

QS = ["Where was the author Gideon Kilbride born?", "What did Gideon Kilbride write?", "Who taught Ana Lopez?"]
ANS = ["Gideon Kilbride was born in Valdomir.", "Gideon Kilbride wrote The Salt Ledger.", "Mira Toll taught her."]
PARAS = ["In which town was Kilbride born?", "Which book is by Kilbride?", "Who was Lopez's teacher?"]


def test_every_family_is_in_the_library_and_every_template_has_one() -> None:
    families = template_families()
    assert set(families.values()) == {*FAMILIES, "none"}
    assert all(sum(f == fam for f in families.values()) >= 1 for fam in FAMILIES)
    # The original five keep their names; each now sits in a family (prefix_injection asks for an affirmative start).
    assert families["reverse_prompt"] == "prefix_injection" and families["prefix_injection"] == "affirmative_suffix"
    assert families["few_shot"] == "in_context_learning" and families["paraphrase"] == "synonym_manipulation"
    assert {n for n, p in probe_library().items() if p.answer_in_prompt} == {"multiple_choice", "reverse_query"}


def test_default_resolution_runs_every_template_but_none_and_families_select() -> None:
    everything = resolve_probes(None)
    assert set(everything) == set(template_library()) - {"none"} and len(everything) == 14
    assert set(resolve_templates(None, families=["cross_lingual"])) == {
        "cross_lingual_fr", "cross_lingual_de", "cross_lingual_es",
    }  # fmt: skip
    both = resolve_probes(["few_shot"], families=["role_play"])
    assert set(both) == {"few_shot", "role_play", "role_play_biographer"}
    with pytest.raises(ValueError, match="Unknown prompt attack family 'jailbreak'"):
        resolve_probes(None, families=["jailbreak"])
    # Custom templates: plain strings (a family of their own) or {text, family}.
    custom = resolve_probes([], {"mine": "Please, {question}", "mc": {"text": "{question}\n{options}", "family": "x"}})
    assert custom["mine"] == Probe("Please, {question}", "mine") and custom["mc"].family == "x"
    assert custom["mc"].answer_in_prompt and not custom["mine"].answer_in_prompt
    with pytest.raises(ValueError, match="must be a string or"):
        resolve_probes([], {"bad": {"txt": "{question}"}})


@pytest.mark.parametrize("name", sorted(template_library()))
def test_every_template_renders_in_both_template_styles(tokenizer, chat_args, manual_args, name) -> None:
    probe = probe_library()[name]
    assert probe.slots <= set(SLOTS) and probe.slots & {"question", "paraphrase", "masked_answer"}
    rows = render_rows(probe.text, QS, ANS, PARAS, few_shot_k=2, choices=3, name=name)
    assert len(rows) == 3 and all("{" not in r and r.strip() for r in rows)
    if "question" in probe.slots:
        assert QS[0] in rows[0]
    if not probe.slots & set(ANSWER_SLOTS):
        assert ANS[0] not in rows[0]  # the row's own answer never leaks into the prompt ...
    if "examples" in probe.slots or "background" in probe.slots:
        assert ANS[1] in rows[0]  # ... only other facts do
    for args in (chat_args, manual_args):
        text = PromptRenderer(tokenizer, args).prompt_text(rows[0])
        assert rows[0].splitlines()[-1] in text
        if args is manual_args:
            assert text.startswith("Question: ") and text.endswith("Answer: ")


def test_multiple_choice_shows_the_answer_among_other_answers() -> None:
    assert choice_options(ANS, 0, choices=3) == [ANS[0], ANS[1], ANS[2]]  # answer at 0 % 3
    assert choice_options(ANS, 1, choices=3) == [ANS[2], ANS[1], ANS[0]]  # at 1 % 3, distractors cyclic from 2
    assert choice_options(ANS, 2, choices=2) == [ANS[2], ANS[0]]  # at 2 % 2 = 0
    dup = ["Yes.", "Yes.", "No.", "Maybe."]
    assert choice_options(dup, 0, choices=4) == ["Yes.", "No.", "Maybe."]  # distinct, never the answer twice
    text = render_rows(template_library()["multiple_choice"], QS, ANS, choices=3)[0]
    assert f"A. {ANS[0]}\nB. {ANS[1]}\nC. {ANS[2]}" in text and text.startswith(QS[0])
    with pytest.raises(ValueError, match="needs answer options"):
        render_rows(template_library()["multiple_choice"], QS[:1], ANS[:1], name="multiple_choice")


def test_reverse_query_masks_what_the_question_names() -> None:
    assert mask_answer(ANS[0], QS[0]) == "___ ___ ___ ___ in Valdomir."
    text = render_rows(template_library()["reverse_query"], QS, ANS)[0]
    assert '"___ ___ ___ ___ in Valdomir."' in text and "Gideon" not in text and QS[0] not in text
    with pytest.raises(ValueError, match="needs the question's answer"):
        render_attack(template_library()["reverse_query"], QS[0], name="reverse_query")


def test_background_hint_gives_other_answers_without_their_questions() -> None:
    text = render_rows(template_library()["background_hint"], QS, ANS, few_shot_k=2)[0]
    assert ANS[1] in text and ANS[2] in text and QS[1] not in text and text.endswith(QS[0])
    with pytest.raises(ValueError, match="needs in-context examples"):
        render_attack(template_library()["background_hint"], QS[0], name="background_hint")


def test_family_summary_takes_each_familys_worst_template() -> None:
    probes = {n: p for n, p in probe_library().items() if p.family in ("role_play", "cross_lingual")}
    by_attack = {
        "role_play": {"rouge": 0.2, "prob": 0.9},
        "role_play_biographer": {"rouge": 0.5, "prob": 0.1},
        "cross_lingual_fr": {"rouge": 0.1, "prob": None},
        "cross_lingual_de": {"rouge": 0.3, "prob": 0.2},
        "cross_lingual_es": {"rouge": None, "prob": 0.3},
    }
    out = family_summary(probes, by_attack, "rouge")
    assert out["value_by_family"] == {
        "role_play": {"rouge": 0.5, "prob": 0.9},
        "cross_lingual": {"rouge": 0.3, "prob": 0.3},
    }
    assert out["worst_template_by_family"] == {"role_play": "role_play_biographer", "cross_lingual": "cross_lingual_de"}
    low = family_summary(probes, by_attack, "rouge", higher_is_worse=False)
    assert low["value_by_family"]["role_play"] == {"rouge": 0.2, "prob": 0.1}
    assert low["worst_template_by_family"]["cross_lingual"] == "cross_lingual_fr"
    # A family none of whose templates ran is left out.
    assert "role_play" not in family_summary(probes, {"cross_lingual_de": {"rouge": 0.3}}, "rouge")["value_by_family"]
