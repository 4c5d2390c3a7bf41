"""The unified record, its converters (TOFU QA, raw text) and JSON/JSONL I/O."""

from __future__ import annotations

import json

import pytest

from duet_plugin.core.unified import (
    UnifiedRecord,
    read_records,
    records_from_qa,
    records_from_text,
    split_sentences,
    write_records,
)


def test_tofu_rows_become_records(authors_dataset) -> None:
    rows = authors_dataset.configs["forget10"]
    records = records_from_qa(rows, stream="forget")
    assert [r.prompt for r in records] == [r["question"] for r in rows]
    assert [r.response for r in records] == [r["answer"] for r in rows]
    assert {r.stream for r in records} == {"forget"} and {r.source for r in records} == {"tofu_qa"}
    tagged = records_from_qa(rows, concept_key="author")
    assert {r.concept for r in tagged} == set(authors_dataset.forget_authors("forget10"))


def test_list_answers_are_not_taken_as_responses() -> None:
    records = records_from_qa([{"question": "Q?", "answer": ["a", "b"]}])
    assert records[0].response is None


def test_missing_question_key_names_it() -> None:
    with pytest.raises(KeyError, match="'query'"):
        records_from_qa([{"question": "Q?"}], question_key="query")


def test_text_becomes_seeded_continuation_queries() -> None:
    text = (
        "The committee met in the old harbour town on a cold morning in March. " * 3
        + "Short one. The second sentence is long enough to become a query for the model here."
    )
    records = records_from_text([text], stream="forget", source="muse", head_words=5)
    assert records[0].prompt == "Continue the following text: The committee met in the"
    assert records[0].response == "old harbour town on a cold morning in March."
    assert all("Short one" not in r.prompt for r in records)
    a = records_from_text([text], max_records=2, seed=1)
    b = records_from_text([text], max_records=2, seed=1)
    assert [r.prompt for r in a] == [r.prompt for r in b] and len(a) == 2
    with pytest.raises(ValueError, match="template"):
        records_from_text([text], template="riddle")


def test_split_sentences() -> None:
    assert split_sentences("One two three four five six. Tiny. Seven eight nine ten eleven twelve!") == [
        "One two three four five six.",
        "Seven eight nine ten eleven twelve!",
    ]


def test_record_validation() -> None:
    with pytest.raises(ValueError, match="prompt"):
        UnifiedRecord(prompt="  ")
    with pytest.raises(ValueError, match="stream"):
        UnifiedRecord(prompt="Q?", stream="other")
    with pytest.raises(ValueError, match="Unknown field"):
        UnifiedRecord.from_dict({"prompt": "Q?", "answer": "A"})


def test_jsonl_round_trip_and_no_silent_overwrite(tmp_path) -> None:
    records = [UnifiedRecord("Q1?", "forget", "tofu_qa", response="A1"), UnifiedRecord("Q2?", "retain", "x")]
    path = write_records(tmp_path / "u.jsonl", records)
    assert read_records(path) == records
    assert read_records(path, stream="retain") == records[1:]
    with pytest.raises(FileExistsError, match="overwrite"):
        write_records(path, records[:1])
    assert read_records(path) == records  # untouched
    write_records(path, records[:1], overwrite=True)
    assert read_records(path) == records[:1]
    (tmp_path / "u.json").write_text(json.dumps([r.to_dict() for r in records]))
    assert read_records(tmp_path / "u.json") == records
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "missing.jsonl")
