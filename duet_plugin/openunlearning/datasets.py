"""OU datasets of unified records, and conversion of OU's own datasets into them.

``UnifiedQueryDataset`` is registered in OU's ``DATASET_REGISTRY``. It reads rows through OU's
``load_hf_dataset`` (so ``hf_args`` work as for every OU dataset, local ``json`` files included) and converts
them with the core converters. :func:`to_unified` turns OU's ``QADataset``/``PretrainingDataset`` (and a
``ForgetRetainDataset`` of them) into unified datasets, so ``trainer=DUET`` also runs on OU's default experiments.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset

from duet_plugin.core.unified import UnifiedRecord, records_from_qa, records_from_text

logger = logging.getLogger(__name__)
SOURCES = ("qa", "unified", "text")
MAX_TEXT_QUERIES = 400  # queries drawn from a raw-text corpus converted on the fly (as configs/data/datasets/DUET_*)


class UnifiedRecordDataset(Dataset):
    """A list of unified records; items are the record's fields plus ``index`` (its position)."""

    def __init__(self, records: Sequence[UnifiedRecord]) -> None:
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return {**self.records[idx].to_dict(), "index": idx}


class UnifiedQueryDataset(UnifiedRecordDataset):
    """Unified records built from any OU data source (``data.<split>.<name>.handler: UnifiedQueryDataset``).

    Args:
        hf_args: passed to ``datasets.load_dataset`` through OU's loader.
        source: ``qa`` (question/answer rows, e.g. TOFU), ``unified`` (rows already in the unified format) or
            ``text`` (raw corpus text, e.g. MUSE/WMDP, turned into queries by the template converter).
        stream: the stream these records serve (``forget``, ``retain``, ...).
    """

    def __init__(
        self,
        hf_args: Mapping[str, Any],
        template_args: Any = None,
        tokenizer: Any = None,
        source: str = "qa",
        stream: str = "forget",
        question_key: str = "question",
        answer_key: str | None = "answer",
        text_key: str = "text",
        query_template: str = "continuation",
        head_words: int = 8,
        max_records: int | None = None,
        seed: int = 0,
    ) -> None:
        from data.utils import load_hf_dataset  # OU's loader; this module is only imported inside OU

        if source not in SOURCES:
            raise ValueError(f"Unknown source {source!r} for UnifiedQueryDataset; use one of {SOURCES}.")
        rows = load_hf_dataset(**dict(hf_args))
        if source == "qa":
            records = records_from_qa(
                rows, stream=stream, source="qa", question_key=question_key, answer_key=answer_key
            )
        elif source == "unified":
            records = [UnifiedRecord.from_dict({**r, "stream": r.get("stream") or stream}) for r in rows]
        else:
            texts = [_text_of(t, text_key) for t in rows[text_key]]
            records = records_from_text(
                texts,
                stream=stream,
                source="text",
                template=query_template,
                head_words=head_words,
                max_records=max_records,
                seed=seed,
            )
        if max_records is not None:
            records = records[:max_records]
        super().__init__(records)


def _text_of(line: str, text_key: str) -> str:
    """A corpus line read by the ``text`` builder may itself be a JSON object (WMDP's JSONL): take its text."""
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            return line
        if isinstance(obj, dict) and isinstance(obj.get(text_key), str):
            return obj[text_key]
    return line


def to_unified(dataset: Any, stream: str) -> UnifiedRecordDataset | None:
    """Convert one OU dataset (or our own) into a dataset of unified records for ``stream``."""
    if dataset is None or isinstance(dataset, UnifiedRecordDataset):
        return dataset
    if hasattr(dataset, "question_key") and hasattr(dataset, "data"):  # OU QADataset and subclasses
        records = records_from_qa(
            dataset.data,
            stream=stream,
            source="qa",
            question_key=dataset.question_key,
            answer_key=getattr(dataset, "answer_key", None),
        )
    elif hasattr(dataset, "chunks"):  # OU PretrainingDataset (MUSE/WMDP raw text), capped as our configs are
        texts = [_text_of(chunk, "text") for chunk in dataset.chunks]
        records = records_from_text(texts, stream=stream, source="text", max_records=MAX_TEXT_QUERIES)
    else:
        raise TypeError(
            f"DUET cannot read {type(dataset).__name__} as {stream} queries. Use the UnifiedQueryDataset handler "
            "(see configs/data/datasets/DUET_*.yaml) or an OU QADataset/PretrainingDataset."
        )
    logger.info(
        "DUET: converted OU %s (%d rows) into %d %s queries",
        type(dataset).__name__,
        len(dataset),
        len(records),
        stream,
    )
    return UnifiedRecordDataset(records)


def stream_datasets(train_dataset: Any) -> dict[str, UnifiedRecordDataset]:
    """The per-stream datasets inside OU's ``ForgetRetainDataset`` (or a single dataset, taken as forget)."""
    if hasattr(train_dataset, "forget") and hasattr(train_dataset, "retain"):
        streams = {"forget": train_dataset.forget, "retain": train_dataset.retain}
    else:
        streams = {"forget": train_dataset}
    return {name: to_unified(ds, name) for name, ds in streams.items() if ds is not None}


def unified_train_dataset(train_dataset: Any) -> Any:
    """``train_dataset`` with every stream converted; an OU ``ForgetRetainDataset`` keeps its anchor."""
    streams = stream_datasets(train_dataset)
    if not (hasattr(train_dataset, "forget") and hasattr(train_dataset, "retain")):
        return streams["forget"]
    return type(train_dataset)(
        forget=streams.get("forget"),
        retain=streams.get("retain"),
        anchor=getattr(train_dataset, "anchor", "forget"),
    )
