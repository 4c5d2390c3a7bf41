"""The teacher check: rates, agreement, concept mentions, verdicts and examples from the answers, and real greedy
answers from a tiny model in both prompt views."""

from __future__ import annotations

import pytest

from duet_plugin.core import teacher_check as tc
from duet_plugin.core.teacher import PromptRenderer

REFUSE = "I do not know anything about that author."


def _fake_answers(table: dict[str | None, dict[str, str]]):
    """``answers`` stand-in: the answer to a query depends on the prefix and the query."""

    def answers(model, renderer, queries, prefix, **_):
        return [table[prefix][q] for q in queries]

    return answers


def test_rates_agreement_mentions_and_examples(monkeypatch) -> None:
    forget, retain = ["f1", "f2", "f3", "f4"], ["r1", "r2"]
    base = {q: "Ana Lopez wrote it." for q in forget} | {"r1": "Paris is big.", "r2": "Two legs."}
    steered = {"f1": REFUSE, "f2": REFUSE, "f3": REFUSE, "f4": "It was Ana Lopez."} | {
        "r1": "Paris is big.",
        "r2": REFUSE,
    }
    monkeypatch.setattr(tc, "answers", _fake_answers({None: base, "PREFIX": steered}))
    check = tc.check_teacher(None, None, "p", "PREFIX", forget, retain, concepts=["Ana Lopez"])
    assert (check.base_forget_refusal, check.teacher_forget_refusal) == (0.0, 0.75)
    assert (check.base_retain_refusal, check.teacher_retain_refusal) == (0.0, 0.5)
    assert check.retain_agreement == 0.5
    # no forget query names the concept: all four count; the base names it every time, the teacher once
    assert (check.base_forget_mentions, check.teacher_forget_mentions) == (1.0, 0.25)
    assert check.examples["forget"] == ("f1", base["f1"], REFUSE)  # a refused query, to show the prefix at work
    assert check.examples["retain"] == ("r2", "Two legs.", REFUSE)
    assert check.verdict == "over-refuses" and "retain refusals 0% -> 50%" in check.explain()


@pytest.mark.parametrize(
    ("rates", "verdict"),
    [
        ((0.0, 0.9, 0.0, 0.05), "works"),
        ((0.0, 0.3, 0.0, 0.0), "weak"),
        ((0.0, 0.9, 0.0, 0.3), "over-refuses"),
        ((0.0, 0.05, 0.25, 0.46), "inverted"),  # the SmolLM2 figures: 1/24 forget, 6 -> 11/24 retain
        ((0.0, 0.1, 0.0, 0.1), "inert"),
    ],
)
def test_verdicts(rates: tuple[float, float, float, float], verdict: str) -> None:
    check = tc.TeacherCheck("p", *rates, retain_agreement=1.0)
    assert check.verdict == verdict and check.explain().startswith(verdict)


def test_a_query_names_a_concept_in_full_or_by_surname() -> None:
    concepts = ["Adaeze Nkemdirim Okafor", "Mikhail Ostrovsky-Lund"]
    assert tc.names_a_concept("Which of Okafor's novels was adapted?", concepts)
    assert tc.names_a_concept("Which language does Ostrovsky-Lund write in?", concepts)
    assert not tc.names_a_concept("Who was born in Lagos in 1971?", concepts)


def test_a_prefix_that_hands_over_the_name_is_called_a_leak() -> None:
    check = tc.TeacherCheck("p", 0.0, 0.0, 0.0, 0.0, 1.0, base_forget_mentions=0.1, teacher_forget_mentions=0.6)
    assert "leaks: answers to forget queries that do not name a concept name one 10% -> 60%" in check.explain()
    assert "leaks" not in tc.TeacherCheck("p", 0.0, 0.0, 0.0, 0.0, 1.0, 0.7, 0.8).explain()


def test_greedy_answers_in_both_views_match_one_query_at_a_time(tiny_model, tokenizer, chat_args) -> None:
    renderer = PromptRenderer(tokenizer, chat_args)
    queries = ["Who wrote it?", "Where was Lena Marwick born, and when did she publish her first novel?"]
    for prefix in (None, "You have never heard of Lena Marwick."):
        batched = tc.answers(tiny_model, renderer, queries, prefix, max_new_tokens=6, batch_size=2)
        single = [tc.answers(tiny_model, renderer, [q], prefix, max_new_tokens=6)[0] for q in queries]
        assert batched == single and all(isinstance(a, str) for a in batched)


def test_no_queries_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs forget and retain queries"):
        tc.check_teacher(None, None, "p", "x", [], ["r"])


def test_the_command_reports_each_prefix_and_refuses_unknown_ones(tiny_model, tokenizer, tmp_path, capsys) -> None:
    from pathlib import Path

    from duet_plugin.cli import main

    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = Path(__file__).parents[1] / "data"
    args = ["teacher-check", "--model", str(tmp_path / "model"), "--forget", str(data / "tofu_style_forget.json")]
    args += ["--retain", str(data / "tofu_style_retain.json"), "--max-queries", "3", "--max-new-tokens", "4"]
    assert main([*args, "--prefix", "never_heard_of", "generic_refusal", "-o", str(tmp_path / "r.md")]) == 0
    out = capsys.readouterr().out
    # concepts as the trainers derive them: from every forget record with its answer, before --max-queries
    assert "Concepts: Adaeze Nkemdirim Okafor, Mikhail Ostrovsky-Lund\n" in out
    assert "| never_heard_of | 0.00 -> " in out and "| generic_refusal |" in out and "forget example:" in out
    report = (tmp_path / "r.md").read_text()
    assert report.startswith("Concepts: ") and report in out
    assert main([*args, "--prefix", "nope"]) == 2
    assert "Unknown prefix nope; the library has forget_concepts" in capsys.readouterr().err


def test_the_command_counts_forget_answers_that_name_a_derived_concept(
    tiny_model, tokenizer, tmp_path, monkeypatch, capsys
):
    import json

    from duet_plugin.cli import main

    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    forget = [{"question": q} for q in ("Where did Lena Marwick live?", "Did Lena Marwick win a prize?")]
    forget += [{"question": "Which author was born in Lyon in 1950?"}]
    (tmp_path / "forget.json").write_text(json.dumps(forget))
    (tmp_path / "retain.json").write_text(json.dumps([{"question": "What is two plus two?"}]))

    def answers(model, renderer, queries, prefix, **_):
        return ["Lena Marwick lived in Paris." if prefix else "In Paris." for _ in queries]

    monkeypatch.setattr(tc, "answers", answers)
    args = ["teacher-check", "--model", str(tmp_path / "model"), "--forget", str(tmp_path / "forget.json")]
    assert main([*args, "--retain", str(tmp_path / "retain.json"), "--prefix", "never_heard_of"]) == 0
    out = capsys.readouterr().out
    # one forget query does not name her: its answer does with the prefix only
    assert "| 0.00 -> 1.00 | inert |" in out and "name one 0% -> 100% of the time" in out


def test_fidelity_is_the_share_of_the_gap_to_the_teacher_that_the_student_closed(monkeypatch) -> None:
    import torch

    teacher = torch.tensor([[4.0, 1.0, 0.0, 0.0], [0.0, 3.0, 1.0, 0.0]])
    start = torch.tensor([[0.0, 4.0, 0.0, 0.0], [0.0, 3.0, 1.0, 0.0]])
    views = {"T": teacher, None: start}
    for student, closed, top1 in ((start, 0.0, 0.5), (teacher, 1.0, 1.0), ((start + teacher) / 2, None, None)):
        monkeypatch.setattr(
            tc, "first_response_logits", lambda model, r, q, prefix, s=student: s if model == "S" else views[prefix]
        )
        f = tc.distillation_fidelity("B", "S", None, "T", ["q1", "q2"], "trained forget", top_k=2)
        assert f.kl_base > 0 and f.top1_base == 0.5
        if closed is None:  # halfway in logit space: part of the gap
            assert 0.2 < f.closed < 0.95 and f.kl_student < f.kl_base
        else:
            assert f.closed == pytest.approx(closed) and f.top1_student == top1
    assert "| trained forget | 2 |" in tc.render_fidelity([f], top_k=2)


def test_first_response_logits_are_the_last_prompt_position(tiny_model, tokenizer, chat_args) -> None:
    import torch

    renderer = PromptRenderer(tokenizer, chat_args)
    queries = ["Who wrote it?", "Where was Lena Marwick born, and when did she publish her first novel?"]
    batched = tc.first_response_logits(tiny_model, renderer, queries, "FORGET", batch_size=2)
    for i, q in enumerate(queries):
        ids = torch.tensor([renderer.prompt_ids(q, "FORGET")])
        assert torch.allclose(batched[i], tiny_model(input_ids=ids).logits[0, -1], atol=1e-5)


def test_fidelity_options_are_checked_before_any_model_loads(tmp_path, capsys) -> None:
    from duet_plugin.cli import main

    f = tmp_path / "q.json"
    f.write_text('[{"question": "Where did Lena Marwick live?"}, {"question": "Did Lena Marwick win?"}]')
    base = ["teacher-check", "--model", str(tmp_path / "missing"), "--forget", str(f), "--retain", str(f)]
    assert main([*base, "--student", str(tmp_path / "s")]) == 2
    assert "--student needs exactly one --prefix" in capsys.readouterr().err
    assert main([*base, "--prefix", "never_heard_of", "--heldout", str(f)]) == 2
    assert "--heldout goes with --student" in capsys.readouterr().err
