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
from collections.abc import Mapping
from typing import Any

from duet_plugin.core.ensemble import as_teacher, check_checkpoint
from duet_plugin.core.lora import AdaptersDisabled
from duet_plugin.core.teacher import concepts_from_records
from duet_plugin.core.teacher_targets import TeacherTargetStore, precompute_targets
from duet_plugin.openunlearning.collators import DUETCollator
from duet_plugin.openunlearning.datasets import stream_datasets, unified_train_dataset
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
            kwargs["train_dataset"] = unified_train_dataset(kwargs["train_dataset"])
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

    def precompute_targets(self, model: Any = None) -> TeacherTargetStore:
        """Teacher targets for every query, from the starting weights, once (with LoRA: from the base with the
        adapters disabled, which at ``train()`` start equals the adapted model, B = 0). With several processes each
        rank computes its share and every rank receives the whole store."""
        store = precompute_targets(
            self.teacher(online=False, model=model),
            stream_datasets(self.train_dataset),
            self.data_collator,
            self.target_cfg,
            self.data_collator.pad_id,
            self.eos_ids,
            context=self.accelerator.autocast,
        )
        logger.info(
            "%s: precomputed teacher targets for %d queries (%.1f KiB)",
            type(self).__name__,
            len(store),
            store.nbytes() / 1024,
        )
        return store

    def train(self, *args: Any, **kwargs: Any) -> Any:
        # Under ZeRO-3 the weights are only usable through the DeepSpeed engine, which HF builds inside train():
        # the targets are then computed at the first step (teacher_source), from the same starting weights.
        if self.cfg.teacher_mode == "precomputed" and self.targets is None and not self.zero3:
            self.targets = self.precompute_targets()
        return super().train(*args, **kwargs)

    def teacher_source(self, model: Any) -> dict[str, Any]:
        """Where this step's targets come from, as the objectives take it: ``{teacher, store}``, one of them set."""
        if self.cfg.teacher_mode == "precomputed" and self.targets is None:
            self.targets = self.precompute_targets(model if self.zero3 else None)
        return {"teacher": self.teacher_model, "store": self.targets}

    @staticmethod
    def streams(inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        """Collated streams by name (a bare teacher/student batch is the forget stream)."""
        return {"forget": inputs} if "student_input_ids" in inputs else inputs
