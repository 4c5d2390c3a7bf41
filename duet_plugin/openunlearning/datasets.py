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

from duet_plugin.core.converters import prefilled_records
from duet_plugin.core.pairing import StreamDraws
from duet_plugin.core.query_builders import records_from_text
from duet_plugin.core.unified import STREAMS, UnifiedRecord, records_from_qa

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


class StreamsDataset(Dataset):
    """Several streams of unified records as one training dataset, anchored like OU's ``ForgetRetainDataset``:
    an epoch is one pass over the anchor stream, and each item holds one record of every other stream too.

    Unlike OU's dataset, which draws the other records from the global RNG when an item is read, item ``p`` reads
    the records :class:`~duet_plugin.core.pairing.StreamDraws` assigns to position ``p`` (seeded, no repeat of a
    record before all are drawn). The plugin's trainers sample positions ``e*N .. (e+1)*N - 1`` in epoch ``e``
    (:class:`~duet_plugin.core.pairing.EpochPositions`), so the queries a run reads are known before it starts and
    only those get teacher targets. Any other sampler over ``range(len(self))`` reads epoch 0's draws."""

    def __init__(self, streams: Mapping[str, UnifiedRecordDataset], anchor: str = "forget", seed: int = 0) -> None:
        if anchor not in streams:
            raise ValueError(f"The anchor stream {anchor!r} is missing; streams: {sorted(streams)}.")
        self.streams = dict(streams)
        self.anchor = anchor
        self.draws = StreamDraws({name: len(ds) for name, ds in self.streams.items()}, anchor, seed)

    def __len__(self) -> int:
        return len(self.streams[self.anchor])

    def __getitem__(self, position: int) -> dict[str, Any]:
        return {name: self.streams[name][idx] for name, idx in self.draws.item(int(position)).items()}


class UnifiedStreamsDataset(StreamsDataset):
    """Every stream of bidirectional distillation from its own source(s): ``data.forget.<name>.handler:
    UnifiedStreamsDataset`` (with an empty ``data.retain``), since OU's ``ForgetRetainDataset`` takes only
    forget/retain.

    Args:
        streams: ``{stream: spec or [spec, ...]}``; a spec holds ``UnifiedQueryDataset`` arguments (``hf_args``,
            ``source``, ``question_key``, ...). A null stream is left out. ``forget`` is required; a missing optional
            stream is logged once; a stream whose sources give no record is an error naming them.
        adversarial_from_forget: ``{prefill_words: [k, ...]}`` adds adversarial records made from the forget
            records' answers (the first k words prefilled: forbidden starts), to any ``adversarial`` sources given.
        prefilled_retain: ``{prefill_words: [k, ...]}`` adds retain records with the first k words of the retain
            answers prefilled (allowed starts the teacher continues), so that deviating after a forbidden start does
            not become deviating after any start.
    """

    def __init__(
        self,
        streams: Mapping[str, Any],
        template_args: Any = None,
        tokenizer: Any = None,
        anchor: str = "forget",
        adversarial_from_forget: Mapping[str, Any] | None = None,
        prefilled_retain: Mapping[str, Any] | None = None,
    ) -> None:
        built: dict[str, list[UnifiedRecord]] = {}
        for name, specs in dict(streams).items():
            if name not in STREAMS:
                raise ValueError(f"UnifiedStreamsDataset: unknown stream {name!r}; streams are {STREAMS}.")
            if specs is None:
                continue
            specs = [specs] if isinstance(specs, Mapping) else list(specs)
            records = [r for spec in specs for r in UnifiedQueryDataset(**{**dict(spec), "stream": name}).records]
            if not records:
                sources = [dict(spec.get("hf_args") or {}) for spec in specs]
                raise ValueError(f"Stream {name!r} is empty: its source(s) {sources} gave no records.")
            built[name] = records
        if "forget" not in built:
            raise ValueError("UnifiedStreamsDataset needs a forget stream (streams.forget).")
        for option, spec, source, target in (
            ("adversarial_from_forget", adversarial_from_forget, "forget", "adversarial"),
            ("prefilled_retain", prefilled_retain, "retain", "retain"),
        ):
            if not spec:
                continue
            if source not in built:
                raise ValueError(f"{option} needs a {source} stream to take answers from (streams.{source}).")
            words = list(spec.get("prefill_words") or [])
            derived = prefilled_records(built[source], words, stream=target)
            if not derived:
                raise ValueError(
                    f"No {source} record has an answer longer than {min(words)} words to prefill: lower "
                    f"{option}.prefill_words ({words}) or set {option} to null."
                )
            built[target] = built.get(target, []) + derived
        missing = [s for s in STREAMS if s not in built]
        if missing:
            logger.info("UnifiedStreamsDataset: no %s stream(s); training on %s", ", ".join(missing), sorted(built))
        super().__init__({name: UnifiedRecordDataset(recs) for name, recs in built.items()}, anchor=anchor)


def stream_datasets(train_dataset: Any) -> dict[str, UnifiedRecordDataset]:
    """The per-stream datasets inside OU's ``ForgetRetainDataset`` (or a single dataset, taken as forget).

    Also unpacks a :class:`StreamsDataset` (under ``data.forget``, OU wraps it with an empty retain side) and a
    retain side holding several datasets keyed by stream (``data.retain`` entries with ``access_key``)."""
    if isinstance(train_dataset, StreamsDataset):
        return dict(train_dataset.streams)
    if hasattr(train_dataset, "forget") and hasattr(train_dataset, "retain"):
        if isinstance(train_dataset.forget, StreamsDataset):
            if train_dataset.retain:
                raise ValueError(
                    "With UnifiedStreamsDataset under data.forget, leave data.retain empty: data.retain={}."
                )
            return dict(train_dataset.forget.streams)
        streams = {"forget": train_dataset.forget}
        retain = train_dataset.retain
        if isinstance(retain, Mapping):
            unknown = sorted(set(retain) - set(STREAMS))
            if unknown:
                raise ValueError(
                    f"data.retain entries {unknown} are not streams; set their access_key to one of {STREAMS}."
                )
            streams.update(retain)
        else:
            streams["retain"] = retain
    else:
        streams = {"forget": train_dataset}
    return {name: to_unified(ds, name) for name, ds in streams.items() if ds is not None}


def unified_train_dataset(train_dataset: Any, seed: int = 0) -> Any:
    """``train_dataset`` with every stream converted: several streams (OU's ``ForgetRetainDataset`` included) become
    a :class:`StreamsDataset` with the same anchor, whose draws are seeded by ``seed``; a single stream stays a
    dataset of records."""
    streams = stream_datasets(train_dataset)
    for name in sorted(streams, key=lambda n: n != "forget"):
        if len(streams[name]) == 0:
            where = "data.forget" if name == "forget" else f"the data of the {name} stream"
            raise ValueError(f"The {name} set has no queries: check {where} (its hf_args and question_key).")
    if len(streams) == 1 and not isinstance(train_dataset, StreamsDataset):
        return next(iter(streams.values()))
    anchor = getattr(train_dataset, "anchor", "forget")
    return StreamsDataset(streams, anchor=anchor if anchor in streams else "forget", seed=seed)
