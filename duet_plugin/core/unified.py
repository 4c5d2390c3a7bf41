"""The unified data representation: one record type for every source (design.md §3.4).

A record is ``{prompt, response?, prefill?, stream, source, concept?}``. Converters turn TOFU QA rows and raw
text corpora (MUSE, WMDP) into records; JSON/JSONL files of records are what the plugin's OU dataset reads.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STREAMS = ("forget", "retain", "boundary", "adversarial")
_FIELDS = ("prompt", "response", "prefill", "stream", "source", "concept")


@dataclass(frozen=True)
class UnifiedRecord:
    """One training query. ``prompt`` is the user turn; ``response`` an optional reference answer; ``prefill``
    an optional start of the assistant turn; ``stream`` which objective it serves; ``source`` where it came from;
    ``concept`` the forget concept it is about, when known."""

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
    """TOFU-style QA rows -> records (the question is the prompt, the answer the reference response)."""
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
TEXT_QUERY_TEMPLATES = {
    "continuation": "Continue the following text: {head}",
    "question": "What do you know about the following? {head}",
}


def split_sentences(text: str, min_words: int = 6) -> list[str]:
    """Split raw text into sentences with at least ``min_words`` words."""
    sentences = (s.strip() for s in _SENTENCE_END.split(" ".join(text.split())))
    return [s for s in sentences if len(s.split()) >= min_words]


def records_from_text(
    texts: Iterable[str],
    stream: str = "forget",
    source: str = "text",
    template: str = "continuation",
    head_words: int = 8,
    max_records: int | None = None,
    seed: int = 0,
) -> list[UnifiedRecord]:
    """Raw corpus text (MUSE, WMDP) -> query records, by a deterministic template over sentences.

    Each query shows the first ``head_words`` words of a sentence; the rest of the sentence is the reference
    response. ``max_records`` samples that many sentences (seeded).
    """
    if template not in TEXT_QUERY_TEMPLATES:
        raise ValueError(f"Unknown text query template {template!r}; use one of {sorted(TEXT_QUERY_TEMPLATES)}.")
    if head_words < 1:
        raise ValueError("head_words must be at least 1.")
    sentences = [s for text in texts for s in split_sentences(text, min_words=head_words + 2)]
    if max_records is not None and len(sentences) > max_records:
        sentences = random.Random(seed).sample(sentences, max_records)
    records = []
    for sentence in sentences:
        words = sentence.split()
        records.append(
            UnifiedRecord(
                prompt=TEXT_QUERY_TEMPLATES[template].format(head=" ".join(words[:head_words])),
                response=" ".join(words[head_words:]),
                stream=stream,
                source=source,
            )
        )
    return records


def read_records(path: str | Path, stream: str | None = None) -> list[UnifiedRecord]:
    """Read records from a JSON list or a JSONL file; ``stream`` keeps only that stream."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No unified-record file at {path}.")
    text = path.read_text()
    rows: Sequence[Mapping[str, Any]]
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = json.loads(text)
    records = [UnifiedRecord.from_dict(r) for r in rows]
    return [r for r in records if stream is None or r.stream == stream]


def write_records(path: str | Path, records: Iterable[UnifiedRecord], overwrite: bool = False) -> Path:
    """Write records as JSONL; refuses to replace an existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (or --overwrite) to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for record in records:
            f.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
