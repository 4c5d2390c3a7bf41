"""The shared base of the plugin's distillation trainers: what DUET, BiDistill and UNDO have in common inside OU.

A method is a subclass with ``config_class`` (its options: a dataclass of ``duet_plugin.core``), ``log_prefix`` and
``compute_loss``, plus, where it needs them, ``prepare`` (checks and data or model changes before HF's Trainer is
built, before any compute) and ``setup`` (after it is built). The base does the rest:

- the method's options are taken out of OU's keyword arguments; one that is neither an option nor HF Trainer's is
  refused by name, and an option error from the core is re-raised under ``trainer.method_args``;
- LoRA: its targets are checked first, the model is wrapped after ``prepare``, the output is saved merged;
- frozen teachers are prepared one way (moved, eval, DeepSpeed/accelerate aware, like OU's reference model);
- the loss terms a method reports with :meth:`log_terms` are averaged into each log line as ``<log_prefix>/<term>``.

Every concrete subclass lands in :data:`PLUGIN_TRAINERS`, which ``registration.py`` puts into OU's registry.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from trainer.unlearn.base import UnlearnTrainer
from transformers import Trainer

from duet_plugin.core.ensemble import TeacherSpec, check_same_vocab, load_checkpoint, vocab_size
from duet_plugin.core.lora import target_module_names, wrap
from duet_plugin.core.options import OptionError, accepted, build, option_names
from duet_plugin.core.teacher_targets import eos_ids as tokenizer_eos_ids
from duet_plugin.openunlearning.trainers.lora_saving import ZERO3_REFUSAL, LoRASaving, zero3_requested

logger = logging.getLogger(__name__)

#: Where OU's configs put a trainer's options.
METHOD_ARGS = "trainer.method_args"
#: Every concrete plugin trainer by class name (what OU's ``trainer.handler`` names).
PLUGIN_TRAINERS: dict[str, type[DistillationTrainer]] = {}


@contextlib.contextmanager
def method_args_errors() -> Iterator[None]:
    """Re-raise a core :class:`OptionError` with the option's Hydra key (``trainer.method_args.<option>``)."""
    try:
        yield
    except OptionError as err:
        raise err.under(f"{METHOD_ARGS}.") from None


def _trainer_kwargs() -> set[str]:
    # `tokenizer`/`processing_class` are named explicitly: on transformers >= 4.46 the signature seen through the
    # deprecation wrapper lacks `tokenizer`, which OU's snapshot still passes.
    return set(inspect.signature(Trainer.__init__).parameters) | {
        "evaluators",
        "template_args",
        "tokenizer",
        "processing_class",
    }


class DistillationTrainer(LoRASaving, UnlearnTrainer):
    """Base of the plugin's trainers; see the module docstring."""

    config_class: ClassVar[type]
    log_prefix: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_class" in vars(cls):
            PLUGIN_TRAINERS[cls.__name__] = cls

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with method_args_errors():
            self.cfg = self.parse_options(kwargs)
            if kwargs.get("model") is None:
                raise ValueError(f"{type(self).__name__} needs the model (OU passes it to every trainer).")
            self.vocab_size = vocab_size(kwargs["model"])
            lora = getattr(self.cfg, "lora", None)
            if lora is not None:  # before anything is loaded, noised or computed
                target_module_names(kwargs["model"], lora)
                if zero3_requested(kwargs.get("args")):
                    raise NotImplementedError(ZERO3_REFUSAL)
            self.prepare(kwargs)
            if lora is not None:
                kwargs["model"] = wrap(kwargs["model"], lora)
        super().__init__(*args, **kwargs)
        if lora is not None and self.zero3:
            raise NotImplementedError(ZERO3_REFUSAL)
        # Our losses are means: let HF scale them for gradient accumulation (transformers >= 4.46 skips that
        # scaling for models whose forward accepts loss kwargs, expecting num_items_in_batch to be used).
        self.model_accepts_loss_kwargs = False
        self._terms: dict[str, list[float]] = defaultdict(list)
        self.pending_logs: dict[str, float] = {}
        with method_args_errors():
            self.setup()

    @classmethod
    def parse_options(cls, kwargs: dict[str, Any]) -> Any:
        """Take the method's options out of ``kwargs`` (OU passes them with HF Trainer's own) and build its config;
        any other stray keyword is refused, naming the options the method takes."""
        config = cls.config_class
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in accepted(config)}
        unknown = sorted(set(kwargs) - _trainer_kwargs())
        if unknown:
            raise ValueError(
                f"Unknown {cls.__name__} option(s) {unknown} in {METHOD_ARGS} (left over from another trainer's "
                f"experiment, e.g. RMU's in unlearn/wmdp/default?). {cls.__name__} takes {list(option_names(config))}. "
                "Remove them with "
                + " ".join(f"~{METHOD_ARGS}.{k}" for k in unknown)
                + f", or use a {cls.__name__} experiment (configs/experiment/unlearn/<benchmark>/)."
            )
        return build(config, options, cls.__name__)

    def prepare(self, kwargs: dict[str, Any]) -> None:
        """Checks and changes to OU's arguments (``model``, ``train_dataset``, ``data_collator``) before HF's Trainer
        is built; nothing here may be expensive."""

    def setup(self) -> None:
        """Work after HF's Trainer is built (the accelerator and the device exist): e.g. preparing teachers."""

    # -- shared pieces ---------------------------------------------------------------------------------------------
    @property
    def zero3(self) -> bool:
        """Whether this run is under DeepSpeed ZeRO-3 (parameters partitioned across ranks)."""
        return bool(self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3)

    @property
    def eos_ids(self) -> list[int]:
        """The tokenizer's end-of-sequence id(s), where the teacher's continuations stop."""
        return tokenizer_eos_ids(getattr(self, "processing_class", None) or self.tokenizer)

    def prepare_frozen(self, model: Any) -> Any:
        """A frozen model on the trainer's device, wrapped as OU's reference model is (``GradDiff._prepare_ref_model``
        without its copy): ZeRO-3 partitions it like the student."""
        model = model.to(self.accelerator.device)
        model.eval()
        if self.is_deepspeed_enabled:
            return self._prepare_deepspeed(model)
        return self.accelerator.prepare_model(model, evaluation_mode=True)

    @staticmethod
    def load_teachers(specs: list[TeacherSpec], student: Any, key: str) -> list[Any]:
        """Every checkpoint teacher (``spec.path``) in the student's dtype, its vocabulary checked against the
        student's; ``key`` is the option errors name."""
        models = []
        for i, spec in enumerate(specs):
            where = f"{key}[{i}].path" if len(specs) > 1 else key
            teacher = load_checkpoint(spec.path, where, dtype=student.dtype)
            check_same_vocab(student, teacher, where)
            logger.info("Teacher %d: %s (weight %.3g)", i, spec.path, spec.weight)
            models.append(teacher)
        return models

    # -- logging ---------------------------------------------------------------------------------------------------
    def log_terms(self, terms: Mapping[str, float]) -> None:
        """Record this step's loss terms; each log line gets their mean since the last one."""
        for key, value in terms.items():
            self._terms[key].append(value)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for key, values in self._terms.items():
            if values:
                logs[f"{self.log_prefix}/{key}"] = round(sum(values) / len(values), 6)
        self._terms.clear()
        logs.update(self.pending_logs)
        self.pending_logs.clear()
        super().log(logs, *args, **kwargs)
