"""Source readers: TOFU QA, plain QA, multiple-choice sets, MUSE raw text and WMDP corpora -> unified records.

QA-like sources (``convert_tofu``, ``convert_qa``, ``convert_mcq``) give records directly; raw-text sources
(``read_muse_texts``, ``read_wmdp_texts``) give the texts that a query builder
(:mod:`duet_plugin.core.query_builders`) turns into records. Every reader takes a file or a Hub-style dataset
folder (``config``/``split`` pick the file, from the folder's dataset card when it has one). Bad input raises
:class:`~duet_plugin.core.unified.DataFormatError` naming the file and the 1-based line.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from duet_plugin.core.unified import DataFormatError, UnifiedRecord, read_json_rows

#: ``source`` of the records each converter writes (raw-text sources: the builder's records carry these too).
SOURCE_LABELS = {"tofu": "tofu_qa", "qa": "qa", "mcq": "mcq", "muse": "muse_text", "wmdp": "wmdp_corpus"}
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".txt")


def resolve_data_files(path: str | Path, config: str | None = None, split: str | None = None) -> list[Path]:
    """The data files behind ``path``: the file itself, or for a folder the files of ``config``/``split``.

    A folder's Hub dataset card (``README.md`` front matter ``configs: - config_name, data_files``) is used when
    present; otherwise the usual names are tried: ``{config}.json[l]``, ``{config}_{split}.json[l]``,
    ``{config}/{split}*``, ``{config}-{split}-corpus.jsonl`` (WMDP corpora) and ``{split}.json[l]``.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"No data file or folder at {path}.")
    card = _card_files(path, config, split)
    if card is not None:
        return card
    names = []
    if config:
        names += [f"{config}{s}" for s in _DATA_SUFFIXES]
        if split:
            names += [f"{config}_{split}{s}" for s in _DATA_SUFFIXES] + [f"{config}-{split}-corpus.jsonl"]
            names += [f"{config}/{split}{s}" for s in _DATA_SUFFIXES] + [f"{config}/{split}-*"]
    if split:
        names += [f"{split}{s}" for s in _DATA_SUFFIXES]
    for name in names:
        found = sorted(Path(p) for p in glob.glob(str(path / name)) if Path(p).is_file())
        if found:
            return found
    present = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.suffix in _DATA_SUFFIXES)[:10]
    raise FileNotFoundError(
        f"No data file for config={config!r} split={split!r} in {path} (tried {', '.join(names) or 'nothing'}; "
        f"found {', '.join(present) or 'no data files'}). Pass the file itself or set --config/--split."
    )


def _card_files(folder: Path, config: str | None, split: str | None) -> list[Path] | None:
    """Files named by the folder's dataset card for ``config``/``split``; ``None`` without a usable card."""
    import yaml

    readme = folder / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError as err:
        raise DataFormatError(readme, f"dataset card front matter is not valid YAML ({err})") from None
    configs = meta.get("configs") if isinstance(meta, dict) else None
    if not isinstance(configs, list) or not configs:
        return None
    by_name = {c.get("config_name", "default"): c for c in configs if isinstance(c, dict)}
    if config is None and len(by_name) == 1:
        config = next(iter(by_name))
    if config not in by_name:
        raise FileNotFoundError(f"{readme}: no config {config!r}; configs are {sorted(by_name)} (set --config).")
    files = by_name[config].get("data_files")
    if isinstance(files, (str, list)) and (isinstance(files, str) or all(isinstance(f, str) for f in files)):
        files = [{"split": "train", "path": files}]
    by_split = {f.get("split", "train"): f.get("path") for f in files or [] if isinstance(f, dict)}
    if split is None and len(by_split) == 1:
        split = next(iter(by_split))
    if split not in by_split:
        raise FileNotFoundError(f"{readme}: config {config!r} has no split {split!r}; splits are {sorted(by_split)}.")
    patterns = by_split[split]
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    found = sorted({Path(p) for pattern in patterns for p in glob.glob(str(folder / pattern))})
    if not found:
        raise FileNotFoundError(f"{readme}: config {config!r} split {split!r} names {patterns}; none is in {folder}.")
    return found


def _rows(
    path: str | Path, config: str | None, split: str | None, text_lines: bool = False
) -> Iterator[tuple[Path, int, Any]]:
    """``(file, line, row)`` over the resolved files of a source."""
    for file in resolve_data_files(path, config, split):
        rows = _parquet_rows(file) if file.suffix == ".parquet" else read_json_rows(file, allow_text_lines=text_lines)
        for line, row in rows:
            yield file, line, row


def _parquet_rows(file: Path) -> Iterator[tuple[int, Any]]:
    """Parquet rows (line = 1-based row number); needs ``pyarrow`` (installed with OU's ``datasets``)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataFormatError(file, "reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(file)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise DataFormatError(file, f"not a readable parquet file ({err})") from None
    yield from enumerate(table.to_pylist(), start=1)


def _object(file: Path, line: int, row: Any) -> Mapping[str, Any]:
    if not isinstance(row, Mapping):
        raise DataFormatError(file, f"expected a JSON object, got {type(row).__name__}", line)
    return row


def _prompt(file: Path, line: int, row: Mapping[str, Any], key: str) -> str:
    if key not in row:
        raise DataFormatError(file, f"no {key!r} field (fields: {sorted(row)}); set the question key", line)
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(file, f"{key!r} is empty or not a string: a record needs a prompt", line)
    return value


def prefill_split(answer: str, words: int) -> tuple[str, str] | None:
    """``(prefill, rest)``: the first ``words`` words of ``answer`` and the rest; ``None`` if nothing is left."""
    tokens = answer.split()
    if len(tokens) <= words:
        return None
    return " ".join(tokens[:words]), " ".join(tokens[words:])


def prefilled_records(
    records: Iterable[UnifiedRecord], prefill_words: Sequence[int], stream: str = "adversarial"
) -> list[UnifiedRecord]:
    """Prefilled records from records with a reference answer: for each length ``k`` the question with the answer's
    first ``k`` words as prefill and the rest as response (records whose answer is too short are skipped).
    ``adversarial``: forbidden starts the model must deviate from; ``retain``: allowed starts it must continue."""
    if not prefill_words or any(int(k) < 1 for k in prefill_words):
        raise ValueError(f"prefill_words must be positive word counts, got {list(prefill_words)}.")
    out = []
    for record in records:
        for k in prefill_words:
            split = prefill_split(record.response or "", int(k))
            if split is not None:
                out.append(
                    UnifiedRecord(
                        prompt=record.prompt,
                        stream=stream,
                        source=record.source,
                        prefill=split[0],
                        response=split[1],
                        concept=record.concept,
                    )
                )
    return out


def _answer_record(
    prompt: str, answer: str | None, stream: str, source: str, concept: str | None, prefill_words: int
) -> UnifiedRecord | None:
    if not prefill_words:
        return UnifiedRecord(prompt=prompt, stream=stream, source=source, response=answer, concept=concept)
    split = prefill_split(answer or "", prefill_words)
    if split is None:
        return None
    prefill, rest = split
    return UnifiedRecord(prompt=prompt, stream=stream, source=source, prefill=prefill, response=rest, concept=concept)


def _check_prefill(stream: str, prefill_words: int) -> None:
    if prefill_words < 0:
        raise ValueError("prefill_words must be 0 (no prefill) or more.")
    if prefill_words and stream != "adversarial":
        raise ValueError(f"Prefill records belong to the 'adversarial' stream, not {stream!r}.")


def _collect(
    path: str | Path, candidates: Iterable[UnifiedRecord | None], prefill_words: int, max_records: int | None
) -> list[UnifiedRecord]:
    """The records among ``candidates`` (None: a row skipped, its answer too short to prefill), the first
    ``max_records`` of them (reading stops there); none at all is an error that says why."""
    records: list[UnifiedRecord] = []
    skipped = 0
    for record in candidates:
        if record is None:
            skipped += 1
            continue
        records.append(record)
        if max_records is not None and len(records) >= max_records:
            break
    if not records:
        why = f" ({skipped} answers have no more than {prefill_words} words to prefill)" if skipped else ""
        raise DataFormatError(path, f"no records{why}")
    return records


def convert_qa(
    path: str | Path,
    stream: str = "forget",
    source: str = SOURCE_LABELS["qa"],
    question_key: str = "question",
    answer_key: str | None = "answer",
    concept_key: str | None = None,
    prefill_words: int = 0,
    max_records: int | None = None,
    config: str | None = None,
    split: str | None = None,
) -> list[UnifiedRecord]:
    """QA rows (JSON array or JSONL of objects) -> records: question -> ``prompt``, answer -> ``response``.

    A missing or non-string answer leaves ``response`` empty. With ``prefill_words = k`` (stream
    ``adversarial``) each record's ``prefill`` is the answer's first ``k`` words and ``response`` the rest; rows
    whose answer has no more than ``k`` words are skipped. ``max_records`` keeps the first that many records.
    """
    _check_prefill(stream, prefill_words)

    def candidates() -> Iterator[UnifiedRecord | None]:
        for file, line, raw in _rows(path, config, split):
            row = _object(file, line, raw)
            prompt = _prompt(file, line, row, question_key)
            answer = row.get(answer_key) if answer_key else None
            answer = answer if isinstance(answer, str) else None
            if prefill_words and answer is None:
                raise DataFormatError(file, f"no string {answer_key!r} to take a prefill from", line)
            concept = row.get(concept_key) if concept_key else None
            if concept is not None and not isinstance(concept, str):
                raise DataFormatError(file, f"{concept_key!r} must be a string, got {type(concept).__name__}", line)
            yield _answer_record(prompt, answer, stream, source, concept, prefill_words)

    return _collect(path, candidates(), prefill_words, max_records)


def convert_tofu(
    path: str | Path,
    stream: str = "forget",
    config: str | None = None,
    split: str | None = "train",
    concept_key: str | None = None,
    prefill_words: int = 0,
    max_records: int | None = None,
) -> list[UnifiedRecord]:
    """TOFU QA (``question``/``answer`` rows; a ``locuslab/TOFU``-style folder with ``config`` e.g. ``forget10``,
    or one of its files) -> records with source ``tofu_qa``."""
    return convert_qa(
        path,
        stream=stream,
        source=SOURCE_LABELS["tofu"],
        concept_key=concept_key,
        prefill_words=prefill_words,
        max_records=max_records,
        config=config,
        split=split,
    )


def mcq_prompt(question: str, choices: list[str]) -> str:
    """The question followed by its lettered choices, one a line (``A. ...``)."""
    if len(choices) > 26:
        raise ValueError("At most 26 choices can be lettered.")
    return "\n".join([question.strip(), *(f"{chr(65 + i)}. {c.strip()}" for i, c in enumerate(choices))])


def _answer_index(answer: Any, n_choices: int) -> int | None:
    if isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    elif isinstance(answer, str) and answer.strip().isdigit():
        index = int(answer.strip())
    elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().isalpha():
        index = ord(answer.strip().upper()) - 65
    else:
        return None
    return index if 0 <= index < n_choices else None


def convert_mcq(
    path: str | Path,
    stream: str = "forget",
    source: str = SOURCE_LABELS["mcq"],
    question_key: str = "question",
    choices_key: str = "choices",
    answer_key: str = "answer",
    prefill_words: int = 0,
    max_records: int | None = None,
    config: str | None = None,
    split: str | None = None,
) -> list[UnifiedRecord]:
    """Multiple-choice rows (WMDP/MMLU style: question, list of choices, answer index) -> records.

    ``prompt`` is the question with its choices lettered A, B, ... one a line; ``response`` is the correct
    choice's text (not its letter), so the record reads like a QA pair and its answer can be prefilled. The answer
    may be a 0-based index (int or digit string) or a letter. ``prefill_words``/``max_records`` as in
    :func:`convert_qa`.
    """
    _check_prefill(stream, prefill_words)

    def candidates() -> Iterator[UnifiedRecord | None]:
        for file, line, raw in _rows(path, config, split):
            row = _object(file, line, raw)
            question = _prompt(file, line, row, question_key)
            choices = row.get(choices_key)
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise DataFormatError(file, f"{choices_key!r} must be a list of at least two strings", line)
            if answer_key not in row:
                raise DataFormatError(file, f"no {answer_key!r} field (fields: {sorted(row)})", line)
            index = _answer_index(row[answer_key], len(choices))
            if index is None:
                what = f"{answer_key!r} = {row[answer_key]!r} is not a choice index (0..{len(choices) - 1}) or letter"
                raise DataFormatError(file, what, line)
            yield _answer_record(
                mcq_prompt(question, choices), choices[index].strip(), stream, source, None, prefill_words
            )

    return _collect(path, candidates(), prefill_words, max_records)


def read_texts(
    path: str | Path, text_key: str = "text", config: str | None = None, split: str | None = None
) -> list[str]:
    """Raw texts from a file or dataset folder: JSON array or JSONL rows that are objects with ``text_key`` or
    JSON strings, or plain text (one text a non-empty line) when the file's first line is not JSON.

    Blank texts are skipped; no text at all is an error naming the file.
    """
    texts = []
    for file, line, row in _rows(path, config, split, text_lines=True):
        if isinstance(row, Mapping):
            if text_key not in row:
                raise DataFormatError(file, f"no {text_key!r} field (fields: {sorted(row)})", line)
            row = row[text_key]
        if not isinstance(row, str):
            raise DataFormatError(
                file, f"expected a text: a JSON object with a string {text_key!r}, a JSON string or a text line", line
            )
        if row.strip():
            texts.append(row)
    if not texts:
        raise DataFormatError(path, "no texts")
    return texts


def read_muse_texts(
    path: str | Path, config: str | None = "raw", split: str | None = "forget", text_key: str = "text"
) -> list[str]:
    """MUSE raw text: rows with a ``text`` key as OU's ``PretrainingDataset`` reads them, from a file or a
    ``muse-bench/MUSE-News``-style folder (``config`` ``raw``, ``split`` ``forget``/``retain1``/...)."""
    return read_texts(path, text_key=text_key, config=config, split=split)


def read_wmdp_texts(
    path: str | Path, config: str | None = None, split: str | None = None, text_key: str = "text"
) -> list[str]:
    """WMDP forget/retain corpora as OU's ``setup_data.py`` lays them out (``data/wmdp/wmdp-corpora/
    cyber-forget-corpus.jsonl``): each line a JSON object with ``text``, a JSON string, or plain text. A folder
    takes ``config`` (``cyber``/``bio``) and ``split`` (``forget``/``retain``)."""
    return read_texts(path, text_key=text_key, config=config, split=split)
