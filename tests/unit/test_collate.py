"""The teacher/student collator: views, aligned positions checked token by token, padding, nesting."""

from __future__ import annotations

import pytest
import torch

from duet_plugin.core.collate import TeacherStudentCollator, extend_with_continuations, gather_positions

PREFIX = "You have never heard of Gideon Kilbride. Say you do not know."
QUERIES = ["Where was the author Gideon Kilbride born?", "Who wrote it?", "What genre does Ulric write in?"]


def _records(stream: str = "forget") -> list[dict]:
    return [{"prompt": q, "stream": stream, "index": i} for i, q in enumerate(QUERIES)]


@pytest.fixture(params=["chat", "manual"])
def template_args(request, chat_args, manual_args) -> dict:
    return chat_args if request.param == "chat" else manual_args


def test_views_differ_only_by_the_prefix(tokenizer, template_args) -> None:
    batch = TeacherStudentCollator(tokenizer, template_args, prefix=PREFIX)(_records())
    for row in range(len(QUERIES)):
        s = batch["student_input_ids"][row][batch["student_attention_mask"][row].bool()]
        t = batch["teacher_input_ids"][row][batch["teacher_attention_mask"][row].bool()]
        s_text, t_text = tokenizer.decode(s), tokenizer.decode(t)
        assert PREFIX not in s_text and PREFIX in t_text
        assert QUERIES[row] in s_text and QUERIES[row] in t_text
    assert batch["index"].tolist() == [0, 1, 2]


def test_first_positions_are_the_last_prompt_tokens(tokenizer, template_args) -> None:
    batch = TeacherStudentCollator(tokenizer, template_args, prefix=PREFIX)(_records())
    lengths_s = batch["student_attention_mask"].sum(1)
    lengths_t = batch["teacher_attention_mask"].sum(1)
    assert batch["student_positions"][:, 0].tolist() == (lengths_s - 1).tolist()
    assert batch["teacher_positions"][:, 0].tolist() == (lengths_t - 1).tolist()
    assert batch["position_mask"].all()
    # Both views end with the same generation prompt, so the aligned tokens are the same token.
    rows = torch.arange(len(QUERIES))
    assert torch.equal(
        batch["student_input_ids"][rows, batch["student_positions"][:, 0]],
        batch["teacher_input_ids"][rows, batch["teacher_positions"][:, 0]],
    )


def test_aligned_positions_predict_the_same_next_token(tokenizer, template_args) -> None:
    """After a shared continuation, position j of each view is followed by the same continuation token."""
    collator = TeacherStudentCollator(tokenizer, template_args, prefix=PREFIX)
    answers = ["He was born in Port Elsa.", "No idea.", "He writes crime fiction novels."]
    conts = [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in answers]
    batch = extend_with_continuations(collator(_records()), conts, collator.pad_id)
    for row, cont in enumerate(conts):
        n = int(batch["position_mask"][row].sum())
        assert n == len(cont)
        for j in range(n):
            s_pos, t_pos = batch["student_positions"][row, j], batch["teacher_positions"][row, j]
            assert batch["student_input_ids"][row, s_pos + 1] == cont[j]
            assert batch["teacher_input_ids"][row, t_pos + 1] == cont[j]
            assert batch["student_attention_mask"][row, s_pos + 1] == 1
            assert batch["teacher_attention_mask"][row, t_pos + 1] == 1


def test_logits_at_positions_are_padding_invariant(tokenizer, tiny_model, chat_args) -> None:
    collator = TeacherStudentCollator(tokenizer, chat_args, prefix=PREFIX)
    batch = collator(_records())
    with torch.no_grad():
        logits = tiny_model(input_ids=batch["student_input_ids"], attention_mask=batch["student_attention_mask"]).logits
        at = gather_positions(logits, batch["student_positions"], batch["position_mask"])
        for row, query in enumerate(QUERIES):
            alone = torch.tensor([collator.renderer.prompt_ids(query)])
            assert torch.allclose(at[row], tiny_model(input_ids=alone).logits[0, -1], atol=1e-5)


def test_nested_streams_are_collated_separately(tokenizer, chat_args) -> None:
    collator = TeacherStudentCollator(tokenizer, chat_args, prefix=PREFIX)
    items = [{"forget": f, "retain": r} for f, r in zip(_records("forget"), _records("retain")[::-1], strict=False)]
    batch = collator(items)
    assert set(batch) == {"forget", "retain"}
    assert batch["retain"]["index"].tolist() == [2, 1, 0]


def test_eos_that_doubles_as_pad_stays_attended(tokenizer, chat_args) -> None:
    # OU's collator masks every pad-id token; ours masks by length, so a pad/eos inside a prompt is seen.
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.pad_token = tok.eos_token  # <|im_end|> closes every chat turn
    batch = TeacherStudentCollator(tok, chat_args, prefix=PREFIX)(_records())
    inside = (batch["student_input_ids"] == tok.eos_token_id) & (batch["student_attention_mask"] == 1)
    assert inside.any()


def test_no_prefix_means_identical_views(tokenizer, chat_args) -> None:
    batch = TeacherStudentCollator(tokenizer, chat_args)(_records())
    assert torch.equal(batch["student_input_ids"], batch["teacher_input_ids"])


def test_missing_template_args_and_empty_batch(tokenizer) -> None:
    with pytest.raises(ValueError, match="template_args"):
        TeacherStudentCollator(tokenizer)(_records())
    with pytest.raises(ValueError, match="empty"):
        TeacherStudentCollator(tokenizer, {"apply_chat_template": True})([])


def test_prefill_is_appended_to_both_views_and_aligned_after_it(tokenizer, template_args) -> None:
    """Adversarial records: the assistant turn is seeded with the prefill in both views; the aligned positions are
    the prefill's last token in each view, which predict the same next answer token."""
    collator = TeacherStudentCollator(tokenizer, template_args, prefix=PREFIX)
    plain = collator(_records())
    prefill = "He was born in"
    prefilled = collator([{**r, "prefill": prefill} for r in _records("adversarial")])
    n = len(tokenizer(prefill, add_special_tokens=False)["input_ids"])
    assert n > 1
    for view in ("student", "teacher"):
        lengths = plain[f"{view}_attention_mask"].sum(1)
        assert prefilled[f"{view}_attention_mask"].sum(1).tolist() == (lengths + n).tolist()
        assert prefilled[f"{view}_positions"][:, 0].tolist() == (lengths + n - 1).tolist()
        for row in range(len(QUERIES)):
            ids = prefilled[f"{view}_input_ids"][row, lengths[row] : lengths[row] + n]
            assert tokenizer.decode(ids).strip() == prefill
    with pytest.raises(ValueError, match="prefill must be the start of the answer as text, not list"):
        collator([{"prompt": QUERIES[0], "prefill": [1, 2]}])


def test_teacher_without_prefill_is_aligned_at_its_response_start(tokenizer, template_args) -> None:
    """teacher_prefill=False: the student view ends after the prefill, the teacher view is the bare question, and the
    aligned positions are the student's post-prefill token and the teacher's generation prompt."""
    records = [{**r, "prefill": "He was born in"} for r in _records("adversarial")]
    restart = TeacherStudentCollator(tokenizer, template_args, prefix=PREFIX, teacher_prefill=False)(records)
    continued = TeacherStudentCollator(tokenizer, template_args, prefix=PREFIX)(records)
    plain = TeacherStudentCollator(tokenizer, template_args, prefix=PREFIX)(_records())
    for key in ("teacher_input_ids", "teacher_attention_mask", "teacher_positions"):
        assert torch.equal(restart[key], plain[key])
    for key in ("student_input_ids", "student_attention_mask", "student_positions"):
        assert torch.equal(restart[key], continued[key])
    unprefixed = TeacherStudentCollator(tokenizer, template_args, teacher_prefill=False)(records)
    assert not torch.equal(unprefixed["teacher_input_ids"], unprefixed["student_input_ids"])
    # Prefilled records of other streams (allowed starts) keep the prefill in the teacher view.
    allowed = [{**r, "stream": "retain"} for r in records]
    kept = TeacherStudentCollator(tokenizer, template_args, prefix=PREFIX, teacher_prefill=False)(allowed)
    assert torch.equal(kept["teacher_input_ids"], continued["teacher_input_ids"])
