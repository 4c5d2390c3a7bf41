"""Several teachers as one: checkpoints and/or prefixes whose logits are averaged (optionally weighted).

A teacher *member* is a model (a checkpoint path, or the trainer's own starting model) read through one *view*
(view 0 is the trainer's main prompt, further views carry other prefixes). :class:`TeacherEnsemble` returns the
weighted mean of the members' logits, so DUET's top-K targets and UNDO's KL see one teacher distribution.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from duet_plugin.core.options import OptionError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherSpec:
    """One configured teacher: ``path`` (``None`` = the starting model), a prefix for DUET (``None`` = the
    trainer's prefix) and its weight in the average."""

    path: str | None = None
    prefix: Any = None
    weight: float = 1.0

    @classmethod
    def parse(cls, value: Any, where: str) -> TeacherSpec:
        if isinstance(value, TeacherSpec):
            return value
        if isinstance(value, str | Path):
            return cls(path=str(value))
        if not isinstance(value, Mapping):
            raise OptionError(where, f"must be a checkpoint path or a mapping {{path, prefix, weight}}, got {value!r}.")
        unknown = sorted(set(value) - {"path", "prefix", "weight"})
        if unknown:
            raise OptionError(where, f"has unknown key(s) {unknown}; a teacher takes path, prefix and weight.")
        weight = value.get("weight", 1.0)
        if weight is None or not isinstance(weight, int | float) or weight < 0:
            raise OptionError(f"{where}.weight", f"must be a non-negative number, got {weight!r}.")
        path = value.get("path")
        return cls(path=None if path is None else str(path), prefix=value.get("prefix"), weight=float(weight))


def parse_teachers(value: Any, key: str = "teachers") -> list[TeacherSpec]:
    """A list of teachers from config (a path, a mapping, or a list of either); weights must not all be zero."""
    if value is None:
        return []
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    specs = [TeacherSpec.parse(v, f"{key}[{i}]") for i, v in enumerate(items)]
    if specs and sum(s.weight for s in specs) <= 0:
        raise OptionError(key, "has weights that sum to zero; give at least one teacher a positive weight.")
    return specs


def check_checkpoint(path: str | Path, key: str) -> Path:
    """Fail early, naming ``key``, unless ``path`` is a local Hugging Face model folder."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(
            f"{key}={path}: no such folder. Point it at a saved model (e.g. the output_dir of an OU unlearning run, "
            "saves/unlearn/<task_name>)."
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{key}={path} has no config.json, so it is not a saved Hugging Face model; point it at the folder that "
            "holds config.json and the weights (an OU run's output_dir)."
        )
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise FileNotFoundError(f"{key}={path} holds no weights (*.safetensors or *.bin); was the run saved?")
    return folder


def load_checkpoint(path: str | Path, key: str, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A frozen causal LM from a local checkpoint, checked first (see :func:`check_checkpoint`)."""
    from transformers import AutoModelForCausalLM

    folder = check_checkpoint(path, key)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype)
    except Exception as err:  # re-raised with the config key that points at the file
        raise ValueError(f"{key}={path} could not be loaded as a causal LM: {err}") from err
    model.eval()
    model.requires_grad_(False)
    return model


def vocab_size(model: Any) -> int:
    """Rows of the output embedding (its full shape, ``ds_shape``, when DeepSpeed ZeRO-3 has partitioned it)."""
    weight = model.get_output_embeddings().weight
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def check_same_vocab(student: Any, teacher: Any, key: str) -> None:
    s, t = vocab_size(student), vocab_size(teacher)
    if s != t:
        raise ValueError(
            f"{key}: the teacher's vocabulary ({t}) differs from the student's ({s}); distillation needs the same "
            "tokenizer. Use a teacher fine-tuned from the same base model."
        )


def average_logits(logits: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_i w_i * logits_i / sum_i w_i`` in float32 (one tensor is returned unchanged)."""
    if len(logits) != len(weights) or not logits:
        raise ValueError("average_logits needs one weight per logits tensor.")
    if len(logits) == 1:
        return logits[0]
    total = float(sum(weights))
    out = torch.zeros_like(logits[0], dtype=torch.float32)
    for x, w in zip(logits, weights, strict=True):
        if w:
            out.add_(x.float(), alpha=w / total)
    return out


@dataclass
class _Output:
    logits: torch.Tensor


class TeacherEnsemble:
    """Members ``(model, view, weight)`` behaving like one frozen causal LM.

    Calling it with ``input_ids``/``attention_mask`` averages the logits of every member on the same tokens (all
    members must then read view 0); :meth:`logits_for_views` runs each member on its own view.
    """

    def __init__(self, members: Sequence[tuple[Any, int, float]]) -> None:
        if not members:
            raise ValueError("A teacher ensemble needs at least one member.")
        self.members = [(m, int(v), float(w)) for m, v, w in members]
        self.views = sorted({v for _, v, _ in self.members})

    @property
    def single_view(self) -> bool:
        return self.views == [0]

    def parameters(self) -> Any:  # like nn.Module.parameters, for device lookups
        return self.members[0][0].parameters()

    def eval(self) -> TeacherEnsemble:
        for model, _, _ in self.members:
            model.eval()
        return self

    def train(self, mode: bool = True) -> TeacherEnsemble:  # teachers stay frozen
        return self

    @property
    def training(self) -> bool:
        return False

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> _Output:
        if not self.single_view:
            raise ValueError("This teacher ensemble reads several prompt views; use logits_for_views().")
        logits = [m(input_ids=input_ids, attention_mask=attention_mask).logits for m, _, _ in self.members]
        return _Output(average_logits(logits, [w for _, _, w in self.members]))

    @torch.no_grad()
    def logits_for_views(self, views: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Each member's logits on its view (``views[v] = (input_ids, attention_mask)``), in member order."""
        return [m(input_ids=views[v][0], attention_mask=views[v][1]).logits for m, v, _ in self.members]

    @property
    def weights(self) -> list[float]:
        return [w for _, _, w in self.members]


def as_teacher(models: Sequence[Any], weights: Sequence[float], views: Sequence[int] | None = None) -> Any:
    """One frozen teacher from ``models``: the model itself when it is alone on the main prompt view, else a
    :class:`TeacherEnsemble` averaging their logits with ``weights``."""
    views = list(views) if views is not None else [0] * len(models)
    if len(models) == 1 and views == [0]:
        return models[0]
    return TeacherEnsemble(list(zip(models, views, weights, strict=True)))
