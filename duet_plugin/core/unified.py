"""The unified data representation: one record type for every source.

A record is ``{prompt, response?, prefill?, stream, source, concept?}``. This module holds the record type and
the JSON/JSONL readers and writers; :mod:`duet_plugin.core.converters` turns source files (TOFU QA, plain QA,
multiple-choice sets, MUSE and WMDP raw text) into records, and :mod:`duet_plugin.core.query_builders` turns raw
text into query records (a seeded template builder and an LLM-assisted one). JSON/JSONL files of records are what
the plugin's OU dataset reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STREAMS = ("forget", "retain", "boundary", "adversarial")
_FIELDS = ("prompt", "response", "prefill", "stream", "source", "concept")


class DataFormatError(ValueError):
    """Bad input data; the message names the file and, where there is one, the 1-based line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class UnifiedRecord:
    """One training query. ``prompt`` is the user turn; ``response`` an optional reference answer; ``prefill``
    an optional start of the assistant turn (adversarial records: the answer goes on as ``response``); ``stream``
    which objective it serves; ``source`` where it came from; ``concept`` the forget concept it is about, when
    known."""

    prompt: str
    stream: str = "forget"
    source: str = "unknown"
    response: str | None = None
    prefill: str | None = None
    concept: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("A unified record needs a non-empty 'prompt' string.")
        if self.stream not in STREAMS:
            raise ValueError(f"Unknown stream {self.stream!r}; use one of {STREAMS}.")
        for name in ("response", "prefill", "concept"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"A unified record's {name!r} must be a string; got {type(value).__name__}.")

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> UnifiedRecord:
        unknown = set(row) - set(_FIELDS) - {"index"}
        if unknown:
            raise ValueError(f"Unknown field(s) {sorted(unknown)} in a unified record; fields are {_FIELDS}.")
        if "prompt" not in row:
            raise ValueError(f"A unified record needs 'prompt'; got fields {sorted(row)}.")
        return cls(**{k: row[k] for k in _FIELDS if k in row and row[k] is not None})

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def records_from_qa(
    rows: Iterable[Mapping[str, Any]],
    stream: str = "forget",
    source: str = "tofu_qa",
    question_key: str = "question",
    answer_key: str | None = "answer",
    concept_key: str | None = None,
) -> list[UnifiedRecord]:
    """In-memory TOFU-style QA rows -> records (the question is the prompt, the answer the reference response).

    For files, use :func:`duet_plugin.core.converters.convert_qa`, whose errors name the file and line.
    """
    records = []
    for i, row in enumerate(rows):
        if question_key not in row:
            raise KeyError(f"Row {i} has no {question_key!r} field (fields: {sorted(row)}); set question_key.")
        answer = row.get(answer_key) if answer_key else None
        records.append(
            UnifiedRecord(
                prompt=row[question_key],
                stream=stream,
                source=source,
                response=answer if isinstance(answer, str) else None,
                concept=row.get(concept_key) if concept_key else None,
            )
        )
    return records


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str, min_words: int = 6) -> list[str]:
    """Split raw text into sentences with at least ``min_words`` words."""
    sentences = (s.strip() for s in _SENTENCE_END.split(" ".join(text.split())))
    return [s for s in sentences if len(s.split()) >= min_words]


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _iter_json_array(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """``(line, item)`` for each item of a JSON array document, the line being where the item starts."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, 0).end()
    if text[pos : pos + 1] != "[":
        raise DataFormatError(path, "expected a JSON array", _line_of(text, pos))
    pos = ws.match(text, pos + 1).end()
    if text[pos : pos + 1] == "]":
        return
    while True:
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataFormatError(path, f"not valid JSON ({err.msg})", _line_of(text, err.pos)) from None
        yield _line_of(text, pos), item
        pos = ws.match(text, end).end()
        sep = text[pos : pos + 1]
        if sep == "]":
            rest = ws.match(text, pos + 1).end()
            if rest < len(text):
                raise DataFormatError(path, "extra data after the JSON array", _line_of(text, rest))
            return
        if sep != ",":
            raise DataFormatError(path, "expected ',' or ']' in the JSON array", _line_of(text, pos))
        pos = ws.match(text, pos + 1).end()


def read_json_rows(path: str | Path, allow_text_lines: bool = False) -> Iterator[tuple[int, Any]]:
    """``(line, value)`` for each row of a JSON array file or a JSONL file (one JSON value a line; the format is
    told by content, not by suffix, as TOFU's ``.json`` files are JSON lines).

    With ``allow_text_lines``, a file whose first line is not JSON is read as plain text, one row a non-empty
    line. Raises :class:`DataFormatError` naming the file and 1-based line for a line that is not JSON, and
    ``FileNotFoundError`` for a missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No data file at {path}.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(path, f"not UTF-8 text ({err.reason}); expected JSON or JSONL") from None
    text = text.removeprefix("\ufeff")
    if text.lstrip().startswith("["):
        yield from _iter_json_array(path, text)
        return
    first, as_text = None, False
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        first = n if first is None else first
        if as_text:
            yield n, line.strip()
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            if not (allow_text_lines and n == first):
                hint = "expected JSON lines" + (" or plain text" if allow_text_lines else " or a JSON array")
                raise DataFormatError(path, f"not valid JSON ({err.msg}); {hint}", n) from None
            as_text, value = True, line.strip()
        yield n, value


def read_records(path: str | Path, stream: str | None = None, default_stream: str | None = None) -> list[UnifiedRecord]:
    """Read records from a JSON list or a JSONL file; ``stream`` keeps only that stream.

    ``default_stream`` is the stream of rows that name none (otherwise ``forget``). Raises
    :class:`DataFormatError` (naming the file and line) for a bad row and for a file with no records.
    """
    records = []
    for line, row in read_json_rows(path):
        if not isinstance(row, Mapping):
            raise DataFormatError(path, f"a unified record must be a JSON object, got {type(row).__name__}", line)
        if default_stream is not None and row.get("stream") is None:
            row = {**row, "stream": default_stream}
        try:
            records.append(UnifiedRecord.from_dict(row))
        except (TypeError, ValueError) as err:
            raise DataFormatError(path, str(err), line) from None
    if not records:
        raise DataFormatError(path, "no unified records in the file")
    return [r for r in records if stream is None or r.stream == stream]


def write_records(path: str | Path, records: Iterable[UnifiedRecord], overwrite: bool = False) -> Path:
    """Write records as JSONL; refuses to replace an existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (or --overwrite) to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(record_line(record))
    tmp.replace(path)
    return path


def record_line(record: UnifiedRecord) -> str:
    """One record as a JSONL line (with its newline)."""
    return json.dumps(record.to_dict(), ensure_ascii=False) + "\n"
