"""The prompt-steered teacher inside OU, shared by DUET and BiDistill (siblings that differ in their objective).

Before HF's Trainer is built (:meth:`SteeredTeacherTrainer.prepare`, no compute): OU's datasets become unified
query streams, the prefix gets its concepts (given, or derived from the forget data and logged), every teacher
checkpoint is checked, and the collator is configured with one prompt view per distinct teacher prefix. Then the
teacher: the starting model (with LoRA: the student with its adapters disabled, no copy), or a ``teachers``
ensemble; its targets are precomputed once from the starting weights (``teacher_mode: precomputed``; under ZeRO-3
at the first step, through the DeepSpeed engine) or computed at every step by a frozen copy (``online``).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

from duet_plugin.core.ensemble import as_teacher, check_checkpoint
from duet_plugin.core.lora import AdaptersDisabled
from duet_plugin.core.pairing import EpochPositions, positions_drawn
from duet_plugin.core.teacher import concepts_from_records
from duet_plugin.core.teacher_targets import PrefixCaches, TeacherTargetStore, precompute_targets
from duet_plugin.openunlearning.collators import DUETCollator
from duet_plugin.openunlearning.datasets import StreamsDataset, stream_datasets, unified_train_dataset
from duet_plugin.openunlearning.trainers.base import METHOD_ARGS, DistillationTrainer

logger = logging.getLogger(__name__)


class SteeredTeacherTrainer(DistillationTrainer):
    """Base of the prompt-steered distillation trainers (``config_class``: a ``SteeredTeacherConfig``)."""

    def prepare(self, kwargs: dict[str, Any]) -> None:
        tokenizer = kwargs.get("processing_class") or kwargs.get("tokenizer")
        if tokenizer is None:
            raise ValueError(f"{type(self).__name__} needs the model's tokenizer (OU passes it to every trainer).")
        self.target_cfg = self.cfg.target_config(self.vocab_size)
        for i, t in enumerate(self.cfg.teachers):
            if t.path is not None:
                check_checkpoint(t.path, f"{METHOD_ARGS}.teachers[{i}].path")
        if kwargs.get("train_dataset") is not None:
            args = kwargs.get("args")
            seed = getattr(args, "data_seed", None)
            seed = getattr(args, "seed", 0) if seed is None else seed
            kwargs["train_dataset"] = unified_train_dataset(kwargs["train_dataset"], seed=seed)
            self._fill_concepts(stream_datasets(kwargs["train_dataset"]))
        kwargs["data_collator"] = self._collator(kwargs, tokenizer)

    def _fill_concepts(self, streams: Mapping[str, Any]) -> None:
        """Check the forget stream; give every prefix that needs concepts and has none the derived ones (logged)."""
        if len(streams.get("forget") or []) == 0:
            raise ValueError("The forget set has no queries: check data.forget (its hf_args and question_key).")
        prefixes = [self.cfg.prefix, *(t.prefix for t in self.cfg.teachers if t.prefix is not None)]
        if not any(p.needs_concepts and not p.concepts for p in prefixes):
            return
        retain = streams["retain"].records if streams.get("retain") is not None else []
        concepts = concepts_from_records(streams["forget"].records, retain)
        logger.info(
            "%s: concepts derived from the forget data (%d records): %s; set %s.prefix.concepts to give them yourself",
            type(self).__name__,
            len(streams["forget"]),
            concepts or "none",
            METHOD_ARGS,
        )

        def filled(p: Any) -> Any:
            return p.with_concepts(concepts) if p is not None and p.needs_concepts and not p.concepts else p

        self.cfg.prefix = filled(self.cfg.prefix)
        self.cfg.teachers = [type(t)(t.path, filled(t.prefix), t.weight) for t in self.cfg.teachers]

    def _collator(self, kwargs: Mapping[str, Any], tokenizer: Any) -> DUETCollator:
        """The teacher/student collator with one prompt view per distinct prefix (0: the main one); fails now on a
        bad template or tokenizer, not at the first batch."""
        texts = [self.cfg.prefix.render()]
        self.teacher_views = []
        for t in self.cfg.teachers:
            text = texts[0] if t.prefix is None else t.prefix.render()
            if text not in texts:
                texts.append(text)
            self.teacher_views.append(texts.index(text))
        collator = kwargs.get("data_collator")
        if not isinstance(collator, DUETCollator):
            collator = DUETCollator(tokenizer=tokenizer)
            logger.info("Using DUETCollator (teacher and student views) instead of the configured collator")
        placement = self.cfg.prefix.placement if self.cfg.prefix.placement != "auto" else collator.placement
        collator.configure(
            template_args=collator.template_args or kwargs.get("template_args"),
            prefix=texts[0],
            placement=placement,
            extra_prefixes=texts[1:],
            teacher_prefill=self.cfg.teacher_prefill,
        )
        collator.renderer  # noqa: B018 - fail now on a bad template/tokenizer
        logger.info("Teacher prefix (%s placement): %s", collator.renderer.placement, texts[0])
        return collator

    def setup(self) -> None:
        self.targets: TeacherTargetStore | None = None
        self.teacher_model = self.teacher(online=True) if self.cfg.teacher_mode == "online" else None
        self.prefix_caches: PrefixCaches = {}  # the online teacher's shared prompt prefix, computed once
        self.add_callback(_EpochToSampler(self))

    # -- the draws -------------------------------------------------------------------------------------------------
    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
        """Positions in order for a :class:`StreamsDataset` (its draws are the shuffle; ``core/pairing.py``), so
        that the queries training reads are known before it starts; HF's sampler for any other dataset."""
        if isinstance(self.train_dataset, StreamsDataset):
            self.epoch_positions = EpochPositions(len(self.train_dataset))
            return self.epoch_positions
        return super()._get_train_sampler(*args, **kwargs)

    def used_queries(self) -> dict[str, list[int]] | None:
        """Per stream, the record indices this run's training reads (from its arguments: steps or epochs, batch,
        accumulation, processes), with one optimiser step of margin; None when every record may be read."""
        if not isinstance(self.train_dataset, StreamsDataset):
            return None
        a = self.args
        records, per_round = len(self.train_dataset), a.per_device_train_batch_size * a.world_size
        rounds_per_epoch = math.ceil(records / per_round)
        if a.max_steps > 0:
            rounds = a.max_steps * a.gradient_accumulation_steps
        else:
            rounds = math.ceil(a.num_train_epochs) * rounds_per_epoch
        drawn = positions_drawn(records, per_round, rounds + a.gradient_accumulation_steps)
        return self.train_dataset.draws.used(drawn)

    # -- the teacher -----------------------------------------------------------------------------------------------
    def starting_model(self, online: bool, model: Any = None) -> Any:
        """The starting model as a teacher. With LoRA: the student with its adapters disabled (the frozen base,
        exactly; no copy, both modes). Else online: a frozen copy; precomputed: ``model`` (the student before its
        first step; under ZeRO-3 the DeepSpeed engine, whose forward gathers the partitioned weights), by default
        ``self.model``."""
        if self.cfg.lora is not None:
            return AdaptersDisabled(self.model)
        if online:
            return self.prepare_frozen(copy.deepcopy(self.model))
        return model if model is not None else self.model

    def teacher(self, online: bool, model: Any = None) -> Any:
        """The starting model (:meth:`starting_model`), or the ``teachers`` ensemble, whose checkpoint members are
        loaded here (for precomputed targets only while they are computed; under ZeRO-3 partitioned like OU's
        reference model in both modes)."""
        specs = self.cfg.teachers
        if not specs:
            return self.starting_model(online, model)
        own = self.starting_model(online, model) if any(t.path is None for t in specs) else None
        on_disk = [t for t in specs if t.path is not None]
        loaded = iter(
            self.prepare_frozen(m) if online or self.zero3 else m.to(self.accelerator.device)
            for m in self.load_teachers(on_disk, self.model, f"{METHOD_ARGS}.teachers")
        )
        models = [own if t.path is None else next(loaded) for t in specs]
        return as_teacher(models, [t.weight for t in specs], self.teacher_views)

    def precompute_targets(self, model: Any = None, every_query: bool = False) -> TeacherTargetStore:
        """Teacher targets for the queries training reads (:meth:`used_queries`; ``every_query``: all of them, for
        callers that draw their own batches), from the starting weights, once (with LoRA: from the base with the
        adapters disabled, which at ``train()`` start equals the adapted model, B = 0). With several processes each
        rank computes its share and every rank receives the whole store."""
        streams = stream_datasets(self.train_dataset)
        used = None if every_query else self.used_queries()
        start = time.perf_counter()
        store = precompute_targets(
            self.teacher(online=False, model=model),
            streams,
            self.data_collator,
            self.target_cfg,
            self.data_collator.pad_id,
            self.eos_ids,
            context=self.accelerator.autocast,
            indices=used,
        )
        logger.info(
            "%s: precomputed teacher targets for the %d queries training reads (%s; %.1f KiB) in %.1f s",
            type(self).__name__,
            len(store),
            ", ".join(f"{s} {len(used[s]) if used else len(ds)} of {len(ds)}" for s, ds in streams.items()),
            store.nbytes() / 1024,
            time.perf_counter() - start,
        )
        return store

    def train(self, *args: Any, **kwargs: Any) -> Any:
        # Under ZeRO-3 the weights are only usable through the DeepSpeed engine, which HF builds inside train():
        # the targets are then computed at the first step (teacher_source), from the same starting weights.
        if self.cfg.teacher_mode == "precomputed" and self.targets is None and not self.zero3:
            self.targets = self.precompute_targets()
        return super().train(*args, **kwargs)

    def teacher_source(self, model: Any) -> dict[str, Any]:
        """Where this step's targets come from, as the objectives take it: ``{teacher, store}`` (one of them set)
        and the online teacher's prefix caches."""
        if self.cfg.teacher_mode == "precomputed" and self.targets is None:
            self.targets = self.precompute_targets(model if self.zero3 else None)
        return {"teacher": self.teacher_model, "store": self.targets, "prefix_caches": self.prefix_caches}

    @staticmethod
    def streams(inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        """Collated streams by name (a bare teacher/student batch is the forget stream)."""
        return {"forget": inputs} if "student_input_ids" in inputs else inputs


class _EpochToSampler(TrainerCallback):
    """Tells the trainer's :class:`EpochPositions` the epoch HF's loop starts (a resumed run's too): accelerate's
    data loader passes ``set_epoch`` on to the sampler in one process, not when it shards batches over ranks."""

    def __init__(self, trainer: SteeredTeacherTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        positions = getattr(self.trainer, "epoch_positions", None)
        if positions is not None:
            positions.set_epoch(math.floor(state.epoch + 1e-6))
