"""Prefix library, prefix rendering and its errors, prompt rendering in both OU template styles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from duet_plugin.core.teacher import (
    PrefixSpec,
    PromptRenderer,
    derive_concepts,
    join_concepts,
    name_runs,
    prefix_library,
)

NO_SYSTEM_TEMPLATE = (  # like Gemma's: raises on a system message
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_library_prefixes_render_with_concepts() -> None:
    assert {"forget_concepts", "forget_authors", "hazardous_knowledge"} <= set(prefix_library())
    text = PrefixSpec(name="forget_authors", concepts=("Ana Lopez", "Bo Chen")).render()
    assert "Ana Lopez and Bo Chen" in text and "{concepts}" not in text


def test_join_concepts() -> None:
    assert join_concepts(["A"]) == "A"
    assert join_concepts(["A", "B", "C"]) == "A, B and C"


def test_literal_text_wins_and_needs_no_concepts() -> None:
    spec = PrefixSpec.from_config({"name": "forget_concepts", "text": "Forget everything about dragons."})
    assert spec.render() == "Forget everything about dragons."


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"name": "nope"}, "prefix.name='nope' is not a known prefix"),
        ({"name": None, "text": None}, "the teacher has no prefix"),
        ({"name": "forget_concepts", "placement": "middle"}, "placement"),
        ({"text": "Forget {topic}."}, "placeholder"),
        ({"name": "forget_concepts", "colour": "red"}, "prefix has unknown key"),
    ],
)
def test_bad_prefix_config_is_rejected(cfg: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrefixSpec.from_config(cfg)


def test_unfilled_concepts_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"prefix\.concepts"):
        PrefixSpec(name="forget_concepts").render()


def test_chat_template_puts_prefix_in_the_system_message(tokenizer, chat_args) -> None:
    r = PromptRenderer(tokenizer, chat_args)
    assert r.placement == "system"
    text = r.prompt_text("Who wrote X?", "FORGET X.")
    assert text.index("You are a helpful assistant.") < text.index("FORGET X.") < text.index("Who wrote X?")
    assert text.endswith("<|im_start|>assistant\n")
    assert "FORGET" not in r.prompt_text("Who wrote X?")
    assert r.teacher_system_prompt("FORGET X.") == {"system_prompt": "You are a helpful assistant.\n\nFORGET X."}


def test_template_without_system_role_puts_prefix_before_the_user_turn(tokenizer) -> None:
    no_system = _copy_with_template(tokenizer, NO_SYSTEM_TEMPLATE)
    r = PromptRenderer(no_system, {"apply_chat_template": True})
    assert r.placement == "user"
    assert "<|im_start|>user\nFORGET X.\n\nWho wrote X?<|im_end|>" in r.prompt_text("Who wrote X?", "FORGET X.")
    with pytest.raises(ValueError, match="system role"):
        PromptRenderer(no_system, {"apply_chat_template": True, "system_prompt": "hi"}).teacher_system_prompt("x")


def test_manual_tags_put_prefix_before_the_user_turn(tokenizer, manual_args) -> None:
    r = PromptRenderer(tokenizer, {**manual_args, "system_prompt_with_special_tokens": "SYS "})
    assert r.prompt_text("Who wrote X?", "FORGET X.") == "SYS FORGET X.\n\nQuestion: Who wrote X?\nAnswer: "
    assert r.prompt_text("Who wrote X?") == "SYS Question: Who wrote X?\nAnswer: "


def test_tokenizer_without_chat_template_needs_manual_tags(tokenizer, manual_args) -> None:
    bare = _copy_with_template(tokenizer, None)
    with pytest.raises(ValueError, match="apply_chat_template=false"):
        PromptRenderer(bare, {"apply_chat_template": True})
    with pytest.raises(ValueError, match="user_start_tag"):
        PromptRenderer(bare, {"apply_chat_template": False})
    PromptRenderer(bare, manual_args)  # manual tags work without a chat template


def test_derive_concepts_finds_recurring_forget_names() -> None:
    forget = [
        "Where was Lena Marwick born?",
        "Did Lena Marwick win the Silver Quill?",
        "What genre does Tomas Ilse Brand write?",
        "Tomas Ilse Brand writes fantasy.",
        "Is Paris big?",
    ]
    retain = ["Where was Ana Lopez born?", "Ana Lopez met Lena Ward."]
    assert derive_concepts(forget, retain) == ["Lena Marwick", "Tomas Ilse Brand"]
    assert derive_concepts(forget, ["Lena Marwick appears in retain too."]) == ["Tomas Ilse Brand"]


def _qa_texts(rows: list[dict]) -> list[str]:
    return [f"{r['question']} {r['answer']}" for r in rows]


def test_derive_concepts_on_tofu_style_data_gives_exactly_the_authors() -> None:
    """Hand-written TOFU-style rows (tests/data/tofu_style_{forget,retain}.json): possessives, quoted titles,
    nationalities, awards, a series detective, surnames alone, two or more authors per split."""
    data = Path(__file__).parents[1] / "data"
    forget = _qa_texts(json.loads((data / "tofu_style_forget.json").read_text()))
    retain = _qa_texts(json.loads((data / "tofu_style_retain.json").read_text()))
    assert derive_concepts(forget, retain) == ["Adaeze Nkemdirim Okafor", "Mikhail Ostrovsky-Lund"]
    assert derive_concepts(forget[:10], retain) == ["Adaeze Nkemdirim Okafor"]
    assert sorted(derive_concepts(retain, forget)) == [
        "Hiroshi Tanabe-Clarke",
        "Marguerite van der Berg",
        "Tomasz Wierzbicki",
        "Valentina Ruiz-Echeverría",
    ]


@pytest.mark.parametrize(
    ("text", "runs"),
    [
        ("How does Mikhail Ostrovsky-Lund's LGBTQ+ identity appear?", ["Mikhail Ostrovsky-Lund"]),
        ('Two of Okafor\'s books are "The Salt Road to Kano" and "Harmattan Letters".', []),
        ("It is by Marguerite van der Berg, a South African author.", ["Marguerite van der Berg"]),
        ("Inspector Varga met Dr Ana Lopez at the Caine Prize dinner.", ["Ana Lopez"]),
        ("Kasimir Stavros' novel", ["Kasimir Stavros"]),
    ],
)
def test_name_runs_leave_out_possessives_titles_ranks_nationalities_and_awards(text: str, runs: list[str]) -> None:
    assert name_runs(text)[0] == runs


def test_derive_concepts_on_the_demo_generator_gives_each_splits_authors() -> None:
    from duet_plugin.demo.fictitious_authors import build_dataset

    for seed in range(6):
        ds = build_dataset(n_authors=40, qa_per_author=5, seed=seed)
        for forget, retain in (("forget01", "retain99"), ("forget05", "retain95"), ("forget10", "retain90")):
            got = derive_concepts(_qa_texts(ds.configs[forget]), _qa_texts(ds.configs[retain]))
            assert sorted(got) == sorted(ds.forget_authors(forget)), (seed, forget)


def _copy_with_template(tokenizer, template):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok
