"""LoRA (via peft) for the distillation trainers: config, wrapping, the adapters-disabled teacher, merged saving.

Framework-free (torch + transformers + peft). The student is the starting model with low-rank adapters on the
targeted linear layers; the base weights stay frozen, so the starting model is always at hand: a teacher that is
"the starting model" runs the same :class:`peft.PeftModel` with its adapters disabled (:class:`AdaptersDisabled`),
with no second copy in memory. At the start of training LoRA's ``B`` matrices are zero, so the adapted model
equals the base; the teacher still runs under ``disable_adapter`` so that it stays the base after any update.
Saving folds the adapters into the base weights (:func:`merged_state_dict`) and writes a plain checkpoint that any
``AutoModelForCausalLM.from_pretrained`` (OU's ``eval.py``) loads, without touching the model being trained.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from duet_plugin.core.options import OptionError, option

logger = logging.getLogger(__name__)

#: Where the trained adapter is saved next to the merged model (``<output_dir>/adapter``).
ADAPTER_DIR = "adapter"
#: peft's shorthand for every linear layer except the output head.
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class LoRAConfig:
    """The ``lora`` option of the plugin's trainers: LoRA adapters via peft."""

    r: int = option(8, help="The adapter rank.")
    alpha: float = option(16.0, help="The update's scale: the update is alpha / r * B A.")
    dropout: float = option(0.0, help="Dropout on the adapter input, in [0, 1).")
    target_modules: tuple[str, ...] | str = option(
        ("q_proj", "v_proj"),
        help="The modules to adapt: a list of module names (a name matches a module whose dotted path ends with it, "
        "as in peft), a regex over full module paths, or all-linear.",
    )

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise OptionError("lora.r", f"must be an integer >= 1 (the adapter rank, e.g. 8), got {self.r!r}.")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or self.alpha <= 0:
            raise OptionError("lora.alpha", f"must be a positive number (e.g. 2 * r), got {self.alpha!r}.")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise OptionError("lora.dropout", f"must be in [0, 1), got {self.dropout!r}.")
        targets = self.target_modules
        if isinstance(targets, str):
            if not targets:
                raise OptionError("lora.target_modules", "is empty; name modules, e.g. [q_proj, v_proj].")
            try:
                re.compile(targets)
            except re.error as err:
                raise OptionError("lora.target_modules", f"={targets!r} is not a valid regex: {err}") from None
        else:
            names = tuple(targets) if isinstance(targets, Sequence) else ()
            if not names or not all(isinstance(n, str) and n for n in names):
                raise OptionError(
                    "lora.target_modules",
                    "must be a non-empty list of module names (e.g. [q_proj, v_proj]), "
                    f"a regex over module paths, or {ALL_LINEAR!r}; got {targets!r}.",
                )
            object.__setattr__(self, "target_modules", names)

    @classmethod
    def from_config(cls, value: Any) -> LoRAConfig | None:
        """``None``/``false``: no LoRA (full fine-tuning); ``true``: the defaults; a mapping: these keys over the
        defaults. Unknown keys are refused, naming the accepted ones."""
        if value is None or value is False:
            return None
        if isinstance(value, LoRAConfig):
            return value
        if value is True:
            return cls()
        if not isinstance(value, Mapping):
            raise OptionError(
                "lora",
                "must be null (full fine-tuning) or a mapping such as "
                f"{{r: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj]}}; got {value!r}.",
            )
        fields = list(cls.__dataclass_fields__)
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise OptionError("lora", f"has unknown key(s) {unknown}; LoRA takes {fields}.")
        options = dict(value)
        targets = options.get("target_modules")
        if targets is not None and not isinstance(targets, str) and isinstance(targets, Sequence):
            options["target_modules"] = tuple(targets)
        return cls(**options)

    def peft_config(self) -> Any:
        """The matching :class:`peft.LoraConfig` (causal LM, no trained biases)."""
        peft = import_peft()
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return peft.LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=float(self.dropout),
            target_modules=targets,
            bias="none",  # trained biases would stay on with the adapters disabled: the teacher would not be the base
            task_type="CAUSAL_LM",
        )


def import_peft() -> Any:
    """``peft``, or an error saying how to install it."""
    try:
        # peft >= 0.18 with some torch builds needs torch.distributed.tensor imported first
        import torch.distributed.tensor  # noqa: F401
    except ImportError:  # pragma: no cover - torch without distributed
        pass
    try:
        import peft
    except ImportError as err:
        raise ImportError(
            "The lora option needs peft: pip install peft==0.17.1 (or pip install -e '.[ou-cpu]'); or set lora to "
            "null for full fine-tuning."
        ) from err
    return peft


def is_peft_model(model: Any) -> bool:
    """Whether ``model`` is a peft-wrapped model (without importing peft when it is not installed)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D)


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The dotted paths of the model's linear layers (``nn.Linear`` and GPT-2's ``Conv1D``)."""
    linear = _linear_types()
    return [name for name, module in model.named_modules() if name and isinstance(module, linear)]


def _output_embedding_name(model: torch.nn.Module) -> str | None:
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if getter is not None else None
    if head is None:
        return None
    return next((name for name, module in model.named_modules() if module is head), None)


def _short_names(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))


def target_module_names(model: torch.nn.Module, cfg: LoRAConfig) -> list[str]:
    """The modules LoRA will adapt, checked before any compute: every listed name (or the regex) must match at
    least one module, every match must be a linear layer, and a head tied to the input embeddings is refused
    (its merged update could not be saved as a plain checkpoint). Errors list the model's linear layers."""
    linear = set(linear_module_names(model))
    head = _output_embedding_name(model)
    available = _short_names(linear_module_names(model))
    hint = (
        f"{type(model).__name__}'s linear layers are {available}: set target_modules to some of them "
        f"(e.g. [q_proj, v_proj] for Llama-style attention) or to {ALL_LINEAR!r}."
    )
    names = [name for name, _ in model.named_modules() if name]
    targets = cfg.target_modules
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        matched = [n for n in linear_module_names(model) if n != head]
        if not matched:
            raise OptionError("lora.target_modules", f"={ALL_LINEAR!r} matches no linear layer. {hint}")
    elif isinstance(targets, str):
        matched = [n for n in names if re.fullmatch(targets, n)]
        if not matched:
            raise OptionError(
                "lora.target_modules",
                f"={targets!r} (a regex over full module paths such as "
                f"{next(iter(sorted(linear)), 'model.layers.0.self_attn.q_proj')!r}) matches no module. {hint}",
            )
    else:
        per_entry = {t: [n for n in names if n == t or n.endswith(f".{t}")] for t in targets}
        missing = [t for t, hits in per_entry.items() if not hits]
        if missing:
            raise OptionError("lora.target_modules", f"entries {missing} match no module of the model. {hint}")
        hit = {n for hits in per_entry.values() for n in hits}
        matched = [n for n in names if n in hit]  # in module order
    not_linear = [n for n in matched if n not in linear]
    if not_linear:
        kinds = sorted({type(model.get_submodule(n)).__name__ for n in not_linear})
        raise OptionError(
            "lora.target_modules",
            f"matches {not_linear[:4]}{' ...' if len(not_linear) > 4 else ''} "
            f"({', '.join(kinds)}), which are not linear layers; LoRA here adapts linear layers only. {hint}",
        )
    if head is not None and head in matched and _tied_head(model):
        raise OptionError(
            "lora.target_modules",
            f"matches the output head {head!r}, whose weight is tied to the input "
            "embeddings: its merged update cannot be saved as a plain checkpoint. Leave it out of target_modules.",
        )
    return matched


def _tied_head(model: torch.nn.Module) -> bool:
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and embed is not None and head.weight is embed.weight


def wrap(model: torch.nn.Module, cfg: LoRAConfig) -> Any:
    """The model with LoRA adapters on the targeted modules (checked first), only the adapters trainable.

    Also makes the input embeddings' output require grad (``enable_input_require_grads``): with reentrant gradient
    checkpointing and frozen embeddings, no input of a checkpointed block would require grad, the adapters would
    get no gradient and backward would fail (OpenUnlearning issue #178). peft does this itself only when the model
    already has checkpointing on, which HF's Trainer switches on later, in ``train()``.
    """
    if is_peft_model(model):
        raise OptionError("lora", "wraps a plain model, but this model already carries peft adapters.")
    targets = target_module_names(model, cfg)
    peft = import_peft()
    wrapped = peft.get_peft_model(model, cfg.peft_config())
    wrapped.enable_input_require_grads()
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    logger.info(
        "LoRA r=%d alpha=%g dropout=%g on %d modules (%s): %s trainable of %s parameters (%.2f%%)",
        cfg.r,
        cfg.alpha,
        cfg.dropout,
        len(targets),
        ", ".join(_short_names(targets)),
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )
    return wrapped


def adapted_module_names(model: Any) -> list[str]:
    """Paths (in the plain model) of the modules that carry LoRA adapters."""
    from peft.tuners.lora import LoraLayer

    return [name for name, module in model.get_base_model().named_modules() if isinstance(module, LoraLayer)]


class AdaptersDisabled:
    """The base model under a :class:`peft.PeftModel`, usable as a frozen causal LM: every call (``forward``,
    ``__call__``, ``generate``) runs with the adapters disabled, in eval mode and without gradient, then restores
    the model's training mode. ``train``/``eval`` leave the shared model alone (the student owns its mode)."""

    def __init__(self, model: Any) -> None:
        if not is_peft_model(model):
            raise TypeError(f"AdaptersDisabled wraps a peft model, got {type(model).__name__}.")
        self.model = model

    @contextlib.contextmanager
    def _base(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.model.disable_adapter():
                yield
        finally:
            self.model.train(was_training)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._base():
            return self.model(*args, **kwargs)

    forward = __call__

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self._base():
            return self.model.generate(*args, **kwargs)

    def parameters(self) -> Iterator[torch.nn.Parameter]:  # like nn.Module.parameters, for device lookups
        return self.model.parameters()

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def training(self) -> bool:
        return False

    def eval(self) -> AdaptersDisabled:
        return self

    def train(self, mode: bool = True) -> AdaptersDisabled:
        return self


@torch.no_grad()
def merged_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The plain model's state dict with each active LoRA update folded into its base weight
    (``W + alpha / r * B A``, as ``merge_and_unload`` computes it), leaving ``model`` untouched: only the adapted
    weights get new tensors, every other entry is the model's own."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    layers = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    state: dict[str, torch.Tensor] = {}
    for key, tensor in base.state_dict().items():
        owner = next((n for n in layers if key.startswith(f"{n}.")), None)
        if owner is None:
            state[key] = tensor
            continue
        rest = key[len(owner) + 1 :]
        if rest.startswith("base_layer."):
            state[f"{owner}.{rest[len('base_layer.') :]}"] = tensor
    for name, layer in layers.items():
        weight = layer.get_base_layer().weight
        if layer.merged:  # merged in place already: the base weight holds the update
            continue
        deltas = [layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A]
        if deltas:
            state[f"{name}.weight"] = (weight + sum(deltas)).to(weight.dtype)
    return state


def save_merged(model: Any, output_dir: str | Path, safe_serialization: bool = True, adapter: bool = True) -> None:
    """Write the merged plain checkpoint (config, weights, generation config) to ``output_dir`` and, with
    ``adapter``, the trained adapter alone to ``output_dir/adapter`` (peft's ``save_pretrained``)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.get_base_model().save_pretrained(
        output_dir, state_dict=merged_state_dict(model), safe_serialization=safe_serialization
    )
    if adapter:
        model.save_pretrained(output_dir / ADAPTER_DIR, safe_serialization=safe_serialization)
    logger.info("LoRA: saved the merged model to %s%s", output_dir, f" (adapter in {ADAPTER_DIR}/)" if adapter else "")
