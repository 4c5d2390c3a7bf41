"""DUET as an OpenUnlearning trainer: a student imitates the prompt-steered teacher by top-K logit distillation.

Thin adapter: the loss, the teacher targets, the views and the prefix are framework-free (``duet_plugin.core``);
this class validates the config before any compute, converts OU's datasets into unified queries, picks the
teacher (precomputed targets from the starting weights, or a frozen copy prepared like OU's reference model) and
wires everything into ``compute_loss``.
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

from duet_plugin.core.duet import DUETConfig, TeacherTargetStore, duet_loss, precompute_targets
from duet_plugin.core.losses import validate_top_k
from duet_plugin.core.teacher import PrefixSpec, derive_concepts
from duet_plugin.openunlearning.collators import DUETCollator
from duet_plugin.openunlearning.datasets import stream_datasets, unified_train_dataset

logger = logging.getLogger(__name__)


#: What ``trainer.method_args`` may hold: the prefix spec plus every DUETConfig field.
METHOD_ARGS = ("prefix", *DUETConfig.__dataclass_fields__)


def _reject_unknown_options(kwargs: Mapping[str, Any]) -> None:
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
            f"Unknown DUET option(s) {unknown} in trainer.method_args (left over from another trainer's experiment, "
            f"e.g. RMU's in unlearn/wmdp/default?). DUET takes {list(METHOD_ARGS)}. Remove them with "
            + " ".join(f"~trainer.method_args.{k}" for k in unknown)
            + ", or use the matching experiment=unlearn/<benchmark>/duet."
        )


class DUET(UnlearnTrainer):
    """``trainer=DUET``: see ``configs/trainer/DUET.yaml`` for every option."""

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
        *args: Any,
        **kwargs: Any,
    ) -> None:
        _reject_unknown_options(kwargs)
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
        model = kwargs.get("model")
        if model is not None:
            validate_top_k(top_k, model.get_output_embeddings().weight.shape[0])
        tokenizer = kwargs.get("processing_class") or kwargs.get("tokenizer")
        if tokenizer is None:
            raise ValueError("DUET needs the model's tokenizer (OU passes it to every trainer).")

        train_dataset = kwargs.get("train_dataset")
        if train_dataset is not None:
            kwargs["train_dataset"] = train_dataset = unified_train_dataset(train_dataset)
            streams = stream_datasets(train_dataset)
            if len(streams.get("forget") or []) == 0:
                raise ValueError("The forget set has no queries: check data.forget (its hf_args and question_key).")
            if spec.needs_concepts and not spec.concepts:
                spec = spec.with_concepts(self._concepts_from_data(streams))
        self.prefix_text = spec.render()

        collator = kwargs.get("data_collator")
        if not isinstance(collator, DUETCollator):
            collator = DUETCollator(tokenizer=tokenizer)
            logger.info("DUET: using DUETCollator (teacher and student views) instead of the configured collator")
        template_args = collator.template_args or kwargs.get("template_args")
        placement = spec.placement if spec.placement != "auto" else collator.placement
        kwargs["data_collator"] = collator.configure(
            template_args=template_args, prefix=self.prefix_text, placement=placement
        )
        collator.renderer  # noqa: B018 - fail now on a bad template/tokenizer, not at the first batch
        logger.info("DUET teacher prefix (%s placement): %s", collator.renderer.placement, self.prefix_text)

        super().__init__(*args, **kwargs)
        # Our loss is a mean per stream: let HF scale it for gradient accumulation (transformers >= 4.46 skips
        # that scaling for models whose forward accepts loss kwargs, expecting num_items_in_batch to be used).
        self.model_accepts_loss_kwargs = False
        self.targets: TeacherTargetStore | None = None
        self.teacher_model = None
        if self.duet.teacher == "online":
            # Prepared exactly like OU's reference model (deepcopy, eval, DeepSpeed/accelerate aware).
            self.teacher_model = GradDiff._prepare_ref_model(self, self.model)
        self._duet_logs: dict[str, list[float]] = defaultdict(list)

    @staticmethod
    def _concepts_from_data(streams: Mapping[str, Any]) -> list[str]:
        forget = streams["forget"].records
        tagged = sorted({r.concept for r in forget if r.concept})
        if tagged:
            return tagged
        retain = streams["retain"].records if streams.get("retain") is not None else []
        texts = [f"{r.prompt} {r.response or ''}" for r in forget]
        return derive_concepts(texts, [f"{r.prompt} {r.response or ''}" for r in retain])

    # -- teacher -------------------------------------------------------------------------------------------
    @property
    def _tokenizer(self) -> Any:
        return getattr(self, "processing_class", None) or self.tokenizer

    @property
    def _eos_ids(self) -> list[int]:
        eos = self._tokenizer.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    @property
    def _pad_id(self) -> int:
        return self.data_collator.pad_id

    def precompute_targets(self) -> TeacherTargetStore:
        """Teacher targets for every forget/retain query, from the current (starting) weights, once."""
        store = precompute_targets(
            self.model,
            stream_datasets(self.train_dataset),
            self.data_collator,
            self.duet,
            self._pad_id,
            self._eos_ids,
            context=self.accelerator.autocast,
        )
        logger.info("DUET: precomputed teacher targets for %d queries (%.1f KiB)", len(store), store.nbytes() / 1024)
        return store

    def train(self, *args: Any, **kwargs: Any) -> Any:
        if self.duet.teacher == "precomputed" and self.targets is None:
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
            self.targets = self.precompute_targets()
        loss, parts = duet_loss(
            model, streams, self.duet, self._pad_id, self._eos_ids, teacher=self.teacher_model, store=self.targets
        )
        for stream, value in parts.items():
            self._duet_logs[f"{stream}_loss"].append(value)
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for key, values in self._duet_logs.items():
            if values:
                logs[f"duet/{key}"] = round(sum(values) / len(values), 6)
        self._duet_logs.clear()
        super().log(logs, *args, **kwargs)
