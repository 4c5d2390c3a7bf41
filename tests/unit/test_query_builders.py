"""Query builders: the seeded template builder and the LLM-assisted builder (run for real on a tiny random Llama)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from duet_plugin.core.query_builders import (
    BLANK,
    LLMQueryBuilder,
    answer_spans,
    cloze_query,
    parse_questions,
    passage_key,
    question_query,
    records_from_text,
    split_passages,
    template_queries,
)
from duet_plugin.core.unified import UnifiedRecord, read_records
from duet_plugin.demo.tiny_llama import build_tiny_llama, build_tokenizer

CORPUS = [
    "Marie Curie discovered radium in 1898 after years of careful work. "
    "The committee met in the old harbour town on a cold morning in March. "
    "She wrote 12 novels, and none of them sold well in her lifetime. "
    "The river flows slowly toward the sea through green fields. Short one.",
    "The harbour town of Elmsworth was founded in 1721 by fishermen from the south coast. "
    "Ships sailed north every spring to trade wool for salt and timber.",
]

# --- template builder ----------------------------------------------------------------------------------------------


def test_continuation_is_records_from_text() -> None:
    records = template_queries(CORPUS, mode="continuation", source="muse_text", head_words=5)
    assert records[0] == UnifiedRecord(
        prompt="Continue the following text: Marie Curie discovered radium in",
        response="1898 after years of careful work.",
        source="muse_text",
    )
    assert records == records_from_text(CORPUS, source="muse_text", head_words=5)
    assert all("Short one" not in r.prompt for r in records)


def test_answer_spans() -> None:
    tokens = "Marie Curie discovered radium in 1898 after 12 years.".split()
    assert answer_spans(" ".join(tokens)) == [(0, 2, "name"), (5, 6, "year"), (7, 8, "number")]
    assert answer_spans("The committee met in March.") == [(4, 5, "name")]  # "The" opening a sentence is no name
    assert answer_spans("Sailors sat.") == []  # a lone capitalised first word is no name; no content word
    assert answer_spans("the river flows slowly toward the sea.") == [(1, 2, "word"), (2, 3, "word")]


def test_cloze_blanks_a_span_and_keeps_it_as_response() -> None:
    prompt, answer = cloze_query("The committee met in the old harbour town in March.", random.Random(0))
    assert (prompt, answer) == ("Fill in the blank: The committee met in the old harbour town in ____.", "March")
    prompt, answer = cloze_query('They met "Jane Doe" in Paris, France.', random.Random(3))
    sentence = prompt.removeprefix("Fill in the blank: ").replace(BLANK, answer)
    assert sentence == 'They met "Jane Doe" in Paris, France.'


def test_question_turns_the_span_into_a_wh_word() -> None:
    rng = random.Random(0)
    assert question_query("Marie Curie discovered radium with her husband.", rng) == (
        "Who discovered radium with her husband?",
        "Marie Curie",
    )
    assert question_query("The town was founded in 1721 by fishermen.", rng) == (
        "The town was founded in which year by fishermen?",
        "1721",
    )
    assert question_query("She wrote 12 novels, and all sold well.", rng) == (
        "She wrote how many novels, and all sold well?",
        "12",
    )
    assert question_query("The committee met in the old harbour town in March.", rng) == (
        "The committee met in the old harbour town in what?",
        "March",
    )
    assert question_query("Sailors sat.", rng) is None


@pytest.mark.parametrize("mode", ["cloze", "question"])
def test_span_modes_are_seeded_and_keep_the_answer(mode) -> None:
    a = template_queries(CORPUS, mode=mode, head_words=4, seed=7)
    assert a == template_queries(CORPUS, mode=mode, head_words=4, seed=7)
    assert len(a) == 6 and {r.source for r in a} == {"text"}
    for r in a:  # the response is a span of some sentence of the corpus
        assert r.response and r.response in " ".join(CORPUS)
        assert (BLANK in r.prompt) == (mode == "cloze") and r.prompt.endswith("?") == (mode == "question")
    seeds = {tuple(r.response for r in template_queries(CORPUS, mode=mode, head_words=4, seed=s)) for s in range(8)}
    assert len(seeds) > 1  # the seed picks the span
    alone = template_queries([CORPUS[1]], mode=mode, head_words=4, seed=7)
    assert alone == a[-2:]  # a sentence's span does not depend on the other sentences
    sampled = template_queries(CORPUS, mode=mode, head_words=4, seed=7, max_records=3)
    assert len(sampled) == 3 and set(sampled) <= set(a)
    with pytest.raises(ValueError, match="template"):
        template_queries(CORPUS, mode="riddle")


def test_split_passages() -> None:
    text = "One two three. Four five six seven. Eight nine. " + " ".join(["word"] * 12) + "."
    assert split_passages([text, "  "], max_words=7) == [
        "One two three. Four five six seven.",
        "Eight nine.",
        " ".join(["word"] * 12) + ".",
    ]
    assert split_passages([text], max_words=100) == [" ".join(text.split())]


def test_passage_key_ignores_whitespace_only() -> None:
    assert passage_key("a  b\nc") == passage_key("a b c") != passage_key("a b d")


# --- parsing the model's reply -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            "Sure! Here are 3 questions:\n1. What is X?\n2) Who is Y?\n3. Where is Z?\n\nLet me know if you need more!",
            ["What is X?", "Who is Y?", "Where is Z?"],
        ),
        ("1. What is X? 2. Who is Y?\n3. What is X?", ["What is X?", "Who is Y?"]),  # inline items, duplicates
        ("Q1: When? \nQuestion 2: Why?\n**3.** How?", ["When?", "Why?", "How?"]),
        ('- What a?\n* What b?\nQuestion: what c?\n"What d?"', ["What a?", "What b?", "what c?", "What d?"]),
        (
            "Questions:\nWhat year was it founded?\r\n\x00\nWho founded it?",
            ["What year was it founded?", "Who founded it?"],
        ),
        ("", []),
        ("1. Founded in 1721?\n2. Chapter 3. was long", ["Founded in 1721?", "Chapter 3. was long"]),
    ],
)
def test_parse_questions(reply, expected) -> None:
    assert parse_questions(reply) == expected


def test_parse_questions_caps_at_n() -> None:
    assert parse_questions("1. A?\n2. B?\n3. C?", n=2) == ["A?", "B?"]


# --- the LLM builder on a tiny random Llama ------------------------------------------------------------------------

PASSAGES = [
    "The harbour town of Elmsworth was founded in 1721 by fishermen who came from the south.",
    "Marie Curie discovered radium in 1898.",
    "The committee met on a cold morning in March.",
    "Ships sailed north every spring to trade wool.",
    "The lighthouse keeper kept a diary for forty years.",
]


@pytest.fixture(scope="module")
def generator():
    """A tiny random Llama with an untied random output layer (a tied random one just repeats its last input
    token) and a ChatML tokenizer. One torch thread: on a busy shared CPU, more make tiny ops many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = build_tokenizer(PASSAGES * 5 + ["1. What is it? 2. Who was there?\n"] * 5, vocab_size=400)
    model = build_tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=4, seed=7)
    model.config.tie_word_embeddings = False
    g = torch.Generator().manual_seed(7)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=g))
    yield model.eval(), tok
    torch.set_num_threads(threads)


def _builder(generator, **kwargs) -> LLMQueryBuilder:
    model, tok = generator
    return LLMQueryBuilder(model, tok, **{"n_questions": 2, "batch_size": 2, "max_new_tokens": 40, **kwargs})


@pytest.fixture(scope="module")
def batched_replies(generator) -> list[str]:
    return _builder(generator, batch_size=len(PASSAGES)).generate(PASSAGES)


@pytest.fixture(scope="module")
def reference(generator, tmp_path_factory):
    """An uninterrupted build (batches of 2) and the model's replies, batch by batch."""
    builder = _builder(generator)
    real_generate = builder.generate
    replies: list[list[str]] = []
    builder.generate = lambda passages: replies.append(real_generate(passages)) or replies[-1]
    out = tmp_path_factory.mktemp("reference") / "q.jsonl"
    records = builder.build(PASSAGES, out, stream="forget", source="muse_text")
    return records, out, replies


def test_render_uses_the_chat_template_unless_told_not_to(generator) -> None:
    rendered = _builder(generator, n_questions=4).render("Some passage.")
    assert rendered.startswith("<|im_start|>user\nRead the passage below and write 4 different questions")
    assert rendered.endswith("Passage:\nSome passage.<|im_end|>\n<|im_start|>assistant\n")
    raw = _builder(generator, chat_template=False, prompt_template="Q about {passage}").render("P.")
    assert raw == "Q about P."
    with pytest.raises(ValueError, match="passage"):
        _builder(generator, prompt_template="no field")


def test_batched_generation_is_left_padded(generator, batched_replies) -> None:
    _, tok = generator
    single = [_builder(generator, batch_size=1).generate([p])[0] for p in PASSAGES]
    assert batched_replies == single  # right padding would change the replies of the shorter prompts
    assert len(set(batched_replies)) > 1 and tok.padding_side == "right"  # the tokenizer's own side is restored


def test_build_writes_records_and_progress(reference) -> None:
    records, out, replies = reference
    assert [len(batch) for batch in replies] == [2, 2, 1]
    expected = [q for batch in replies for reply in batch for q in parse_questions(reply, 2)]
    assert [r.prompt for r in records] == expected
    assert len(PASSAGES) < len(records) <= 2 * len(PASSAGES)  # some replies hold two questions, none more
    assert read_records(out) == records
    assert {r.stream for r in records} == {"forget"} and {r.source for r in records} == {"muse_text"}
    assert all(r.response is None for r in records)
    progress = [json.loads(line) for line in out.with_name("q.jsonl.progress").read_text().splitlines()]
    assert progress[0]["settings"]["n_questions"] == 2
    assert [p["passage"] for p in progress[1:]] == [passage_key(p) for p in PASSAGES]
    assert sum(p["records"] for p in progress[1:]) == len(records)


def test_interrupted_build_resumes_where_it_stopped(tmp_path, generator, reference, monkeypatch) -> None:
    ref_records, ref_out, _ = reference
    out = tmp_path / "q.jsonl"
    builder = _builder(generator)
    real_generate = builder.generate
    calls: list[list[str]] = []

    def crash_on_second_batch(passages):
        calls.append(list(passages))
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return real_generate(passages)

    monkeypatch.setattr(builder, "generate", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="interrupted"):
        builder.build(PASSAGES, out, source="muse_text")
    progress = out.with_name("q.jsonl.progress")
    assert len(progress.read_text().splitlines()) == 3  # settings + the two passages of the first batch
    # a crash in the middle of writing: a stray record line and half a progress line
    with out.open("a") as f:
        f.write('{"prompt": "half a rec')
    with progress.open("a") as f:
        f.write('{"passage": "ab')

    resumed = _builder(generator)
    calls.clear()
    monkeypatch.setattr(resumed, "generate", lambda passages: calls.append(list(passages)) or real_generate(passages))
    records = resumed.build(PASSAGES, out, source="muse_text")
    assert calls == [PASSAGES[2:4], PASSAGES[4:]]  # only the passages not done
    assert records == ref_records and out.read_text() == ref_out.read_text()
    calls.clear()
    assert resumed.build(PASSAGES, out, source="muse_text") == ref_records and calls == []  # all done


def test_resume_refuses_other_settings_and_foreign_files(tmp_path, generator) -> None:
    out = tmp_path / "q.jsonl"
    _builder(generator).build(PASSAGES[:2], out)
    with pytest.raises(ValueError, match="n_questions differ"):
        _builder(generator, n_questions=5).build(PASSAGES, out)
    with pytest.raises(ValueError, match="stream differ"):
        _builder(generator).build(PASSAGES, out, stream="retain")
    fresh = _builder(generator, n_questions=1).build(PASSAGES[:2], out, overwrite=True)
    assert len(fresh) == 2 and len(out.read_text().splitlines()) == 2
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"prompt": "Q?"}\n')
    with pytest.raises(FileExistsError, match="overwrite"):
        _builder(generator).build(PASSAGES, foreign)
    assert foreign.read_text() == '{"prompt": "Q?"}\n'


def test_max_records_caps_the_output(tmp_path, generator) -> None:
    records = _builder(generator).build(PASSAGES, tmp_path / "q.jsonl", max_records=2)
    assert len(records) == 2
    assert _builder(generator).build(PASSAGES, tmp_path / "q.jsonl", max_records=2) == records  # resumed: done


def test_builder_loads_a_local_model_folder(tmp_path, generator, batched_replies) -> None:
    from duet_plugin.demo.tiny_llama import save_model

    model, tok = generator
    save_model(model, tok, tmp_path / "gen")
    loaded = LLMQueryBuilder(tmp_path / "gen", n_questions=2, batch_size=5, max_new_tokens=40, device="cpu")
    assert loaded.model_name == str(tmp_path / "gen")
    assert loaded.generate(PASSAGES) == batched_replies
    with pytest.raises(FileNotFoundError, match="local model"):
        LLMQueryBuilder(tmp_path / "nothing-here")
