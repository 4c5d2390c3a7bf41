"""The unified record, its in-memory converters (TOFU QA rows, raw text) and JSON/JSONL I/O."""

from __future__ import annotations

import json

import pytest

from duet_plugin.core.query_builders import records_from_text
from duet_plugin.core.unified import (
    DataFormatError,
    UnifiedRecord,
    read_json_rows,
    read_records,
    records_from_qa,
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


def test_read_records_errors_name_file_and_line(tmp_path) -> None:
    path = tmp_path / "u.jsonl"
    path.write_text('{"prompt": "Q1?"}\n\n{"prompt": "Q2?", "answer": "A"}\n')
    with pytest.raises(DataFormatError, match=r"u\.jsonl:3: Unknown field\(s\) \['answer'\]"):
        read_records(path)
    path.write_text('{"prompt": "Q1?"}\n{"prompt": "Q2?", "stream": "nope"}\n')
    with pytest.raises(DataFormatError, match=r"u\.jsonl:2: Unknown stream 'nope'"):
        read_records(path)
    path.write_text('{"prompt": "Q1?"}\n["Q2?"]\n')
    with pytest.raises(DataFormatError, match=r"u\.jsonl:2: a unified record must be a JSON object"):
        read_records(path)
    path.write_text('{"prompt": "Q1?", "response": 3}\n')
    with pytest.raises(DataFormatError, match=r"u\.jsonl:1: .*'response' must be a string"):
        read_records(path)
    path.write_text("\n")
    with pytest.raises(DataFormatError, match=r"u\.jsonl: no unified records"):
        read_records(path)


def test_read_records_default_stream(tmp_path) -> None:
    path = tmp_path / "u.jsonl"
    path.write_text('{"prompt": "Q1?"}\n{"prompt": "Q2?", "stream": "retain"}\n')
    assert [r.stream for r in read_records(path)] == ["forget", "retain"]
    assert [r.stream for r in read_records(path, default_stream="boundary")] == ["boundary", "retain"]
    assert read_records(path, stream="adversarial") == []  # a missing stream is the caller's concern


def test_read_json_rows_lines_and_formats(tmp_path) -> None:
    array = tmp_path / "a.json"
    array.write_text('[\n  {"a": 1},\n\n  "two", 3\n]\n')
    assert list(read_json_rows(array)) == [(2, {"a": 1}), (4, "two"), (4, 3)]
    text = tmp_path / "t.txt"
    text.write_text("plain line\n\n{not json}\n")
    assert list(read_json_rows(text, allow_text_lines=True)) == [(1, "plain line"), (3, "{not json}")]
    with pytest.raises(DataFormatError, match=r"t\.txt:1: not valid JSON"):
        list(read_json_rows(text))
    trailing = tmp_path / "x.json"
    trailing.write_text('[{"a": 1}]\n{"b": 2}\n')
    with pytest.raises(DataFormatError, match=r"x\.json:2: extra data"):
        list(read_json_rows(trailing))
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(DataFormatError, match=r"b\.jsonl: not UTF-8"):
        list(read_json_rows(binary))
