"""DUET as an OpenUnlearning trainer: a student imitates the prompt-steered teacher by top-K logit distillation.

Thin adapter: the loss, the teacher targets, the views and the prefix are framework-free (``duet_plugin.core``);
this class validates the config before any compute, converts OU's datasets into unified queries, picks the
teacher (precomputed targets from the starting weights, or a frozen copy prepared like OU's reference model) and
wires everything into ``compute_loss``. With ``lora`` (``duet_plugin.core.lora``) the student is the starting model
plus peft adapters, the starting-model teacher is the same model with its adapters disabled (no copy) and the
output_dir receives the merged plain model.
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from trainer.unlearn.base import UnlearnTrainer
from trainer.unlearn.grad_diff import GradDiff
from transformers import Trainer

from duet_plugin.core.duet import DUETConfig, TeacherTargetStore, duet_loss, eos_ids, precompute_targets
from duet_plugin.core.ensemble import check_checkpoint, parse_teachers, vocab_size
from duet_plugin.core.lora import (
    LORA_KEY,
    ZERO3_REFUSAL,
    AdaptersDisabled,
    LoRAConfig,
    wrap,
    zero3_requested,
)
from duet_plugin.core.losses import validate_top_k
from duet_plugin.core.teacher import PrefixSpec, concepts_from_records
from duet_plugin.openunlearning.collators import DUETCollator
from duet_plugin.openunlearning.datasets import stream_datasets, unified_train_dataset
from duet_plugin.openunlearning.trainers.lora_saving import LoRASaving
from duet_plugin.openunlearning.trainers.teachers import ensemble, load_teachers, prepare_frozen

logger = logging.getLogger(__name__)


#: What ``trainer.method_args`` may hold: the prefix spec, the teacher list, LoRA, every DUETConfig field.
METHOD_ARGS = ("prefix", "teachers", "lora", *DUETConfig.__dataclass_fields__)
TEACHERS_KEY = "trainer.method_args.teachers"


def reject_unknown_options(
    kwargs: Mapping[str, Any],
    method: str = "DUET",
    method_args: tuple[str, ...] = METHOD_ARGS,
    experiment: str = "duet",
) -> None:
    """OU passes ``trainer.method_args`` as keyword arguments next to HF Trainer's own; name any stray one."""
    # `tokenizer`/`processing_class` are named explicitly: on transformers >= 4.46 the signature seen through the
    # deprecation wrapper lacks `tokenizer`, which OU's snapshot still passes.
    accepted = set(inspect.signature(Trainer.__init__).parameters) | {
        "evaluators",
        "template_args",
        "tokenizer",
        "processing_class",
    }
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"Unknown {method} option(s) {unknown} in trainer.method_args (left over from another trainer's "
            f"experiment, e.g. RMU's in unlearn/wmdp/default?). {method} takes {list(method_args)}. Remove them with "
            + " ".join(f"~trainer.method_args.{k}" for k in unknown)
            + f", or use the matching experiment=unlearn/<benchmark>/{experiment}."
        )


class DUET(LoRASaving, UnlearnTrainer):
    """``trainer=DUET``: see ``configs/trainer/DUET.yaml`` for every option."""

    log_prefix = "duet"

    def __init__(
        self,
        prefix: Mapping[str, Any] | str | None = None,
        top_k: int = 10,
        distance: str = "huber",
        huber_delta: float = 1.0,
        positions: str = "first",
        num_positions: int = 8,
        stream_weights: Mapping[str, float] | None = None,
        teacher: str = "precomputed",
        teacher_batch_size: int = 16,
        teachers: Any = None,
        lora: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        reject_unknown_options(kwargs)
        self.lora = LoRAConfig.from_config(lora)
        self.duet = DUETConfig(
            top_k=top_k,
            distance=distance,
            huber_delta=huber_delta,
            positions=positions,
            num_positions=num_positions,
            teacher=teacher,
            teacher_batch_size=teacher_batch_size,
            stream_weights=dict(stream_weights or {"forget": 1.0, "retain": 1.0}),
        )
        spec = PrefixSpec.from_config(prefix)
        self.teacher_specs = parse_teachers(teachers, TEACHERS_KEY)
        member_prefixes = [None if t.prefix is None else PrefixSpec.from_config(t.prefix) for t in self.teacher_specs]
        for i, t in enumerate(self.teacher_specs):
            if t.path is not None:
                check_checkpoint(t.path, f"{TEACHERS_KEY}[{i}].path")
        model = kwargs.get("model")
        if model is not None:
            validate_top_k(top_k, vocab_size(model))
        if self.lora is not None:
            if model is None:
                raise ValueError(f"{LORA_KEY} needs the model (OU passes it to every trainer).")
            if zero3_requested(kwargs.get("args")):
                raise NotImplementedError(ZERO3_REFUSAL)
            kwargs["model"] = wrap(model, self.lora)  # checks target_modules first
        tokenizer = kwargs.get("processing_class") or kwargs.get("tokenizer")
        if tokenizer is None:
            raise ValueError("DUET needs the model's tokenizer (OU passes it to every trainer).")

        train_dataset = kwargs.get("train_dataset")
        if train_dataset is not None:
            kwargs["train_dataset"] = train_dataset = unified_train_dataset(train_dataset)
            streams = stream_datasets(train_dataset)
            if len(streams.get("forget") or []) == 0:
                raise ValueError("The forget set has no queries: check data.forget (its hf_args and question_key).")
            needs = [p for p in (spec, *member_prefixes) if p is not None and p.needs_concepts and not p.concepts]
            if needs:
                retain = streams["retain"].records if streams.get("retain") is not None else []
                concepts = concepts_from_records(streams["forget"].records, retain)
                logger.info(
                    "DUET: concepts derived from the forget data (%d records): %s; set "
                    "trainer.method_args.prefix.concepts to give them yourself",
                    len(streams["forget"]),
                    concepts or "none",
                )
                spec = spec.with_concepts(concepts) if spec in needs else spec
                member_prefixes = [p.with_concepts(concepts) if p in needs else p for p in member_prefixes]
        self.prefix_text = spec.render()
        # Prompt views: 0 = the main prefix; every other distinct member prefix adds one.
        texts = [self.prefix_text]
        self.teacher_views = []
        for p in member_prefixes:
            text = self.prefix_text if p is None else p.render()
            if text not in texts:
                texts.append(text)
            self.teacher_views.append(texts.index(text))

        collator = kwargs.get("data_collator")
        if not isinstance(collator, DUETCollator):
            collator = DUETCollator(tokenizer=tokenizer)
            logger.info("DUET: using DUETCollator (teacher and student views) instead of the configured collator")
        template_args = collator.template_args or kwargs.get("template_args")
        placement = spec.placement if spec.placement != "auto" else collator.placement
        kwargs["data_collator"] = collator.configure(
            template_args=template_args, prefix=self.prefix_text, placement=placement, extra_prefixes=texts[1:]
        )
        collator.renderer  # noqa: B018 - fail now on a bad template/tokenizer, not at the first batch
        logger.info("DUET teacher prefix (%s placement): %s", collator.renderer.placement, self.prefix_text)

        super().__init__(*args, **kwargs)
        if self.lora is not None and self.zero3:
            raise NotImplementedError(ZERO3_REFUSAL)
        # Our loss is a mean per stream: let HF scale it for gradient accumulation (transformers >= 4.46 skips
        # that scaling for models whose forward accepts loss kwargs, expecting num_items_in_batch to be used).
        self.model_accepts_loss_kwargs = False
        self.targets: TeacherTargetStore | None = None
        self.teacher_model = None
        if self.duet.teacher == "online":
            self.teacher_model = self._teacher(online=True)
        self._duet_logs: dict[str, list[float]] = defaultdict(list)

    # -- teacher -------------------------------------------------------------------------------------------
    @property
    def _tokenizer(self) -> Any:
        return getattr(self, "processing_class", None) or self.tokenizer

    @property
    def _eos_ids(self) -> list[int]:
        return eos_ids(self._tokenizer)

    @property
    def _pad_id(self) -> int:
        return self.data_collator.pad_id

    @property
    def zero3(self) -> bool:
        """Whether this run is under DeepSpeed ZeRO-3 (parameters partitioned across ranks)."""
        return bool(self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3)

    def _starting_model(self, online: bool, model: Any = None) -> Any:
        """The starting model as a teacher. With LoRA: the student itself with its adapters disabled (the frozen
        base, exactly; no copy, both modes). Else online: a frozen copy prepared like OU's reference model
        (deepcopy, eval, DeepSpeed/accelerate aware); precomputed: ``model`` (the student before its first step;
        under ZeRO-3 the DeepSpeed engine, whose forward gathers the partitioned weights), default ``self.model``."""
        if self.lora is not None:
            return AdaptersDisabled(self.model)
        if online:
            return GradDiff._prepare_ref_model(self, self.model)
        return model if model is not None else self.model

    def _teacher(self, online: bool, model: Any = None) -> Any:
        """The teacher: the starting model (see :meth:`_starting_model`), or the configured ``teachers`` ensemble,
        whose checkpoint members are loaded here (for precomputed targets: only while the targets are computed;
        under ZeRO-3 they are partitioned like OU's reference model in both modes)."""
        if not self.teacher_specs:
            return self._starting_model(online, model)
        needs_self = any(t.path is None for t in self.teacher_specs)
        own = self._starting_model(online, model) if needs_self else None
        on_disk = [t for t in self.teacher_specs if t.path is not None]
        loaded = iter(
            prepare_frozen(self, m) if online or self.zero3 else m.to(self.accelerator.device)
            for m in load_teachers(on_disk, self.model, TEACHERS_KEY)
        )
        models = [own if t.path is None else next(loaded) for t in self.teacher_specs]
        return ensemble(models, self.teacher_specs, self.teacher_views)

    def precompute_targets(self, model: Any = None) -> TeacherTargetStore:
        """Teacher targets for every forget/retain query, from the starting weights, once (with LoRA: from the
        base with the adapters disabled, which at ``train()`` start also equals the adapted model, B = 0). With
        several processes each rank computes its share and every rank receives the whole store."""
        store = precompute_targets(
            self._teacher(online=False, model=model),
            stream_datasets(self.train_dataset),
            self.data_collator,
            self.duet,
            self._pad_id,
            self._eos_ids,
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
        # the targets are then computed at the first step (compute_loss), from the same starting weights.
        if self.duet.teacher == "precomputed" and self.targets is None and not self.zero3:
            self.targets = self.precompute_targets()
        return super().train(*args, **kwargs)

    # -- loss ----------------------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: Any,
        inputs: Mapping[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        streams = {"forget": inputs} if "student_input_ids" in inputs else inputs
        if self.duet.teacher == "precomputed" and self.targets is None:
            self.targets = self.precompute_targets(model if self.zero3 else None)
        loss, parts = self.objective(model, streams)
        for key, value in parts.items():
            self._duet_logs[key].append(value)
        return (loss, None) if return_outputs else loss

    def objective(self, model: Any, streams: Mapping[str, Any]) -> tuple[Any, dict[str, float]]:
        """The loss on one batch of collated streams and its logged parts (``<stream>_loss``)."""
        loss, parts = duet_loss(
            model, streams, self.duet, self._pad_id, self._eos_ids, teacher=self.teacher_model, store=self.targets
        )
        return loss, {f"{stream}_loss": value for stream, value in parts.items()}

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for key, values in self._duet_logs.items():
            if values:
                logs[f"{self.log_prefix}/{key}"] = round(sum(values) / len(values), 6)
        self._duet_logs.clear()
        super().log(logs, *args, **kwargs)
