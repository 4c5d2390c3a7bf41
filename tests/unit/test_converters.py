"""Source readers: TOFU QA, plain QA, MCQ, MUSE raw text and WMDP corpora -> unified records, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from duet_plugin.core.converters import (
    convert_mcq,
    convert_qa,
    convert_tofu,
    mcq_prompt,
    prefill_split,
    read_muse_texts,
    read_texts,
    read_wmdp_texts,
    resolve_data_files,
)
from duet_plugin.core.unified import DataFormatError
from duet_plugin.demo.fictitious_authors import write_hub_layout


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _muse_folder(root: Path, splits: dict[str, list[str]], config: str = "raw") -> Path:
    """A muse-bench/MUSE-News-style folder, as tests/integration/conftest.py lays it out."""
    folder = root / "muse-bench" / "MUSE-News"
    folder.mkdir(parents=True)
    card = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split, texts in splits.items():
        (folder / f"{config}_{split}.json").write_text(json.dumps([{"text": t} for t in texts]))
        card += [f"  - split: {split}", f"    path: {config}_{split}.json"]
    (folder / "README.md").write_text("\n".join([*card, "---", ""]))
    return folder


# --- TOFU and plain QA ---------------------------------------------------------------------------------------------


def test_tofu_hub_folder_and_file(tmp_path, authors_dataset) -> None:
    folder = write_hub_layout(authors_dataset, tmp_path)
    rows = authors_dataset.configs["forget10"]
    records = convert_tofu(folder, config="forget10", stream="forget")
    assert [(r.prompt, r.response) for r in records] == [(r["question"], r["answer"]) for r in rows]
    assert {r.source for r in records} == {"tofu_qa"} and {r.stream for r in records} == {"forget"}
    assert convert_tofu(folder / "forget10.json") == records
    tagged = convert_tofu(folder, config="forget10", concept_key="author")
    assert {r.concept for r in tagged} == set(authors_dataset.forget_authors("forget10"))
    with pytest.raises(FileNotFoundError, match="forget10"):  # several configs: the error lists them
        convert_tofu(folder)
    with pytest.raises(FileNotFoundError, match="no config 'forget99'"):
        convert_tofu(folder, config="forget99")


def test_tofu_json_lines_in_a_json_file(tmp_path) -> None:
    """TOFU's Hub files are JSON lines with a .json suffix: the format is told by content."""
    path = _jsonl(
        tmp_path / "forget01.json", [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]
    )
    assert [r.prompt for r in convert_tofu(path)] == ["Q1?", "Q2?"]


def test_plain_qa_keys_limits_and_missing_answers(tmp_path) -> None:
    rows = [{"input": f"Q{i}?", "output": f"A{i}"} for i in range(5)] + [{"input": "Q5?"}]
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(rows, indent=2))
    records = convert_qa(path, stream="retain", question_key="input", answer_key="output")
    assert [r.prompt for r in records] == [f"Q{i}?" for i in range(6)]
    assert [r.response for r in records] == [f"A{i}" for i in range(5)] + [None]
    assert {r.source for r in records} == {"qa"} and {r.stream for r in records} == {"retain"}
    assert convert_qa(path, "retain", question_key="input", answer_key="output", max_records=2) == records[:2]
    assert all(r.response is None for r in convert_qa(path, question_key="input", answer_key=None))


def test_adversarial_prefill_records(tmp_path) -> None:
    path = _jsonl(
        tmp_path / "qa.jsonl",
        [
            {"question": "Where was she born?", "answer": "She was born in Elmsworth in 1971."},
            {"question": "Short?", "answer": "Yes indeed"},
        ],
    )
    records = convert_qa(path, stream="adversarial", prefill_words=3)
    assert len(records) == 1  # "Yes indeed" has no words left after a 3-word prefill
    assert records[0].prefill == "She was born" and records[0].response == "in Elmsworth in 1971."
    assert records[0].stream == "adversarial"
    with pytest.raises(ValueError, match="adversarial"):
        convert_qa(path, stream="forget", prefill_words=3)
    with pytest.raises(DataFormatError, match=r"qa\.jsonl: no records \(2 answers have no more than 9 words"):
        convert_qa(path, stream="adversarial", prefill_words=9)
    assert prefill_split("a b c", 1) == ("a", "b c") and prefill_split("a b", 2) is None


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("question,answer\nWho?,Me\n", 1, "not valid JSON"),  # a CSV fed to the JSON reader
        ('{"question": "Q1?"}\n\n["not", "an", "object"]\n', 3, "expected a JSON object, got list"),
        ('{"question": "Q1?"}\n{"query": "Q2?", "answer": "A"}\n', 2, "no 'question' field"),
        ('{"question": "Q1?"}\n{"question": "  ", "answer": "A"}\n', 2, "needs a prompt"),
        ('{"question": "Q1?"}\n{"question": "Q2?"\n', 2, "not valid JSON"),
        ('[\n  {"question": "Q1?"},\n  {"question": 3}\n]\n', 3, "'question' is empty or not a string"),
        ('[\n  {"question": "Q1?"},\n  {"question": "Q2?",}\n]\n', 3, "not valid JSON"),
    ],
)
def test_bad_qa_input_names_file_and_line(tmp_path, content, line, message) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=message) as err:
        convert_qa(path)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert err.value.line == line and err.value.path == path


def test_empty_source_names_the_file(tmp_path) -> None:
    for name, content in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("empty.json", "[]")):
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(DataFormatError, match=rf"{name}: no records"):
            convert_qa(path)
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        convert_qa(tmp_path / "missing.jsonl")


# --- multiple choice -----------------------------------------------------------------------------------------------


def test_mcq_prompt_lists_lettered_choices_and_response_is_the_choice_text(tmp_path) -> None:
    rows = [
        {"question": "Which port is oldest?", "choices": ["Elmsworth", "Dunmoor", "Kestrel Bay"], "answer": 2},
        {"question": "Which year?", "choices": ["1721", "1803"], "answer": "A"},
    ]
    records = convert_mcq(_jsonl(tmp_path / "mcq.jsonl", rows), stream="forget")
    assert records[0].prompt == "Which port is oldest?\nA. Elmsworth\nB. Dunmoor\nC. Kestrel Bay"
    assert [r.response for r in records] == ["Kestrel Bay", "1721"]
    assert {r.source for r in records} == {"mcq"}
    adversarial = convert_mcq(tmp_path / "mcq.jsonl", stream="adversarial", prefill_words=1)
    assert [(r.prefill, r.response) for r in adversarial] == [("Kestrel", "Bay")]
    assert mcq_prompt("Q?", ["x", "y"]) == "Q?\nA. x\nB. y"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "Q?", "choices": ["a", "b"], "answer": 2}, "not a choice index"),
        ({"question": "Q?", "choices": ["a", "b"], "answer": True}, "not a choice index"),
        ({"question": "Q?", "choices": "a b", "answer": 0}, "list of at least two strings"),
        ({"question": "Q?", "choices": ["a", "b"]}, "no 'answer' field"),
        ({"choices": ["a", "b"], "answer": 0}, "no 'question' field"),
    ],
)
def test_bad_mcq_rows_name_file_and_line(tmp_path, row, message) -> None:
    good = {"question": "Q?", "choices": ["a", "b"], "answer": 1}
    path = _jsonl(tmp_path / "mcq.jsonl", [good, row])
    with pytest.raises(DataFormatError, match=message) as err:
        convert_mcq(path)
    assert str(err.value).startswith(f"{path}:2: ")


# --- raw text: MUSE and WMDP ---------------------------------------------------------------------------------------


def test_muse_folder_file_and_jsonl(tmp_path) -> None:
    folder = _muse_folder(tmp_path, {"forget": ["Forget text one.", "Forget text two."], "retain1": ["Retain."]})
    assert read_muse_texts(folder) == ["Forget text one.", "Forget text two."]  # defaults: config raw, split forget
    assert read_muse_texts(folder, split="retain1") == ["Retain."]
    assert read_muse_texts(folder / "raw_forget.json") == ["Forget text one.", "Forget text two."]
    with pytest.raises(FileNotFoundError, match=r"no split 'holdout'.*\['forget', 'retain1'\]"):
        read_muse_texts(folder, split="holdout")
    rows = _jsonl(tmp_path / "muse.jsonl", [{"text": "A"}, {"text": "  "}, {"text": "B"}])
    assert read_muse_texts(rows) == ["A", "B"]  # blank texts are skipped


def test_folder_without_card_uses_usual_names(tmp_path) -> None:
    (tmp_path / "raw").mkdir()
    _jsonl(tmp_path / "raw" / "forget.jsonl", [{"text": "T"}])
    assert resolve_data_files(tmp_path, "raw", "forget") == [tmp_path / "raw" / "forget.jsonl"]
    with pytest.raises(FileNotFoundError, match=r"found raw/forget\.jsonl"):
        resolve_data_files(tmp_path, "raw", "retain")


def test_muse_parquet(tmp_path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "raw").mkdir()
    pq.write_table(pa.table({"text": ["Parquet one.", "Parquet two."]}), tmp_path / "raw" / "forget-00000.parquet")
    assert read_muse_texts(tmp_path) == ["Parquet one.", "Parquet two."]


def test_wmdp_corpus_lines_in_all_three_formats(tmp_path) -> None:
    corpora = tmp_path / "data" / "wmdp" / "wmdp-corpora"
    corpora.mkdir(parents=True)
    _jsonl(corpora / "cyber-forget-corpus.jsonl", [{"text": "Object line."}, "String line.", {"text": "Again."}])
    (corpora / "cyber-retain-corpus.jsonl").write_text("Plain text line one.\n\nPlain {text} line two.\n")
    assert read_wmdp_texts(corpora, config="cyber", split="forget") == ["Object line.", "String line.", "Again."]
    assert read_wmdp_texts(corpora / "cyber-retain-corpus.jsonl") == ["Plain text line one.", "Plain {text} line two."]


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ('{"text": "ok"}\n{"body": "no text key"}\n', 2, "no 'text' field"),
        ('{"text": "ok"}\n42\n', 2, "expected a text"),
        ('{"text": "ok"}\nplain text after JSON lines\n', 2, "not valid JSON"),
        ('{"text": ["not", "a", "string"]}\n', 1, "expected a text"),
    ],
)
def test_bad_corpus_lines_name_file_and_line(tmp_path, content, line, message) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=message) as err:
        read_wmdp_texts(path)
    assert str(err.value).startswith(f"{path}:{line}: ")


def test_qa_file_fed_to_the_text_reader_is_an_error(tmp_path, authors_dataset) -> None:
    folder = write_hub_layout(authors_dataset, tmp_path)
    with pytest.raises(DataFormatError, match=r"forget10\.json:2: no 'text' field"):
        read_texts(folder / "forget10.json")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataFormatError, match=r"empty\.jsonl: no texts"):
        read_wmdp_texts(empty)


def test_prefilled_records_prefill_each_answer_at_each_length() -> None:
    from duet_plugin.core.converters import prefilled_records
    from duet_plugin.core.unified import UnifiedRecord

    forget = [
        UnifiedRecord(prompt="Where was X born?", response="X was born in Valdomir in 1950.", concept="X"),
        UnifiedRecord(prompt="Who is Y?", response="A poet."),
        UnifiedRecord(prompt="No answer here?"),
    ]
    out = prefilled_records(forget, [2, 4])
    assert [(r.prefill, r.response) for r in out] == [
        ("X was", "born in Valdomir in 1950."),
        ("X was born in", "Valdomir in 1950."),
    ]  # "A poet." has no word left after a 2-word prefill; no answer, no record
    assert all(r.stream == "adversarial" and r.prompt == "Where was X born?" and r.concept == "X" for r in out)
    with pytest.raises(ValueError, match="positive word counts"):
        prefilled_records(forget, [0])
