"""UNDO's framework-free pieces (Lee et al., 2025): its config, the distillation loss, the retain-recovery gap.

Unlearn (any method) -> noise a copy (:func:`duet_plugin.core.noise.shrink_and_perturb`) -> distil the unlearned
teacher's outputs into it with forward KL over generic/retain text, until the student's retain loss is back within a
fraction of the teacher's. The OU trainer (``duet_plugin.openunlearning.trainers.undo``) wires these in.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from duet_plugin.core.distributed import is_zero3_partitioned
from duet_plugin.core.ensemble import TeacherSpec, parse_teachers
from duet_plugin.core.logits import keep_arg
from duet_plugin.core.lora import LoRAConfig
from duet_plugin.core.losses import forward_kl_loss, select_topk, topk_distillation_loss
from duet_plugin.core.noise import DEFAULT_EXCLUDE
from duet_plugin.core.options import OptionError, one_of, option, positive_int

STUDENT_INITS = ("teacher", "model")
TOKENS = ("labels", "all")


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


@dataclass
class UNDOConfig:
    """UNDO's options (the shipped defaults: ``configs/trainer/UNDO.yaml``).

    ``alpha``/``beta`` default to the paper's recommendation for its synthetic tasks (0.6, 0.1); its WMDP run
    uses ``alpha=0.25, beta=0``. ``recovery=0.95`` stops once the student's retain loss is within 5% of the
    teacher's (the official code's synthetic-task criterion: relative gap < 0.05); ``None`` trains to max_steps.
    """

    renamed: ClassVar[dict[str, str]] = {"positions": "tokens"}

    teacher: Any = option(
        None,
        help="Required for a run: the unlearned model's folder (the output_dir of a DUET, BiDistill or OU baseline "
        "run), or several [{path, weight}, ...] whose logits are averaged.",
    )
    student_init: str = option(
        "teacher", help="teacher: the student is a noised copy of the (first) teacher | model: of model=..."
    )
    alpha: float = option(0.6, help="Shrink: p <- (1 - alpha) p + alpha beta N (0 = no noise; paper synthetic 0.6).")
    beta: float = option(0.1, help="Noise scale of the Xavier-uniform N for 2-D weights (paper WMDP run: 0).")
    noise_include: list[str] = option(help="Regexes over parameter names to noise.", factory=lambda: [r".*"])
    noise_exclude: list[str] = option(
        help="Regexes over parameter names left unnoised (Llama's RMSNorm scales by its weight).",
        factory=lambda: list(DEFAULT_EXCLUDE),
    )
    noise_seed: int = option(0, help="Seed of the noise.")
    streams: list[str] = option(
        help="Which stream(s) of data=unlearn to distil on (the paper: generic/retain text only).",
        factory=lambda: ["retain"],
    )
    tokens: str = option("labels", help="labels: positions predicting a label token | all: every attended token.")
    top_k: int | None = option(None, help="null: full-vocabulary KL (the paper) | K: teacher top-K + a tail bucket.")
    temperature: float = option(1.0, help="Softmax temperature of the KL.")
    recovery: float | None = option(
        0.95, help="Stop once the student's retain NLL <= the teacher's x (2 - recovery); null: run to max_steps."
    )
    recovery_eval_steps: int = option(10, help="Measure the retain gap every N optimiser steps (undo/retain_gap).")
    recovery_batches: int = option(4, help="Batches of the distillation data the gap is measured on (the first).")
    lora: Any = option(
        None,
        help="Null: full fine-tuning (recommended). LoRA via peft {r, alpha, dropout, target_modules}: the student "
        "is noised, then wrapped; only the adapters train over the frozen noised base (see "
        "docs/training.md for what that recovers).",
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise OptionError("alpha", f"must be in [0, 1] (0 = no noise), got {self.alpha}.")
        if self.beta < 0:
            raise OptionError("beta", f"must be >= 0, got {self.beta}.")
        one_of(
            "student_init",
            self.student_init,
            STUDENT_INITS,
            " (teacher: a noised copy of the teacher; model: of model=...)",
        )
        if self.top_k is not None:
            positive_int("top_k", self.top_k)
        if self.temperature <= 0:
            raise OptionError("temperature", f"must be positive, got {self.temperature}.")
        one_of("tokens", self.tokens, TOKENS)
        self.streams = _as_list(self.streams)
        if not self.streams or any(s not in ("forget", "retain") for s in self.streams):
            raise OptionError(
                "streams",
                f"={self.streams}: choose from forget/retain (UNDO distils on retain, i.e. generic, data; the paper "
                "never distils on the forget set).",
            )
        if self.recovery is not None and not 0.0 < self.recovery <= 1.0:
            raise OptionError("recovery", f"must be in (0, 1] or null, got {self.recovery}.")
        positive_int("recovery_eval_steps", self.recovery_eval_steps)
        positive_int("recovery_batches", self.recovery_batches)
        self.noise_include, self.noise_exclude = _as_list(self.noise_include), _as_list(self.noise_exclude)
        self.lora = LoRAConfig.from_config(self.lora)

    def teachers(self) -> list[TeacherSpec]:
        """The teacher checkpoint(s): at least one, each with a path and no prompt prefix."""
        specs = parse_teachers(self.teacher, "teacher")
        if not specs:
            raise OptionError(
                "teacher",
                "is required: set it to the unlearned model to distil from (the output_dir of a DUET, BiDistill or "
                "OU baseline run, e.g. saves/unlearn/<task_name>), or a list of {path, weight} teachers.",
            )
        for i, spec in enumerate(specs):
            where = f"teacher[{i}]" if len(specs) > 1 else "teacher"
            if spec.path is None:
                raise OptionError(where, "has no path; every UNDO teacher is a saved checkpoint.")
            if spec.prefix is not None:
                raise OptionError(
                    f"{where}.prefix",
                    "is not for UNDO: it distils on plain retain text, where a prompt prefix has no place; prefixed "
                    "teachers belong to DUET (its teachers option).",
                )
        return specs


def distill_mask(
    labels: torch.Tensor | None, attention_mask: torch.Tensor | None, input_ids: torch.Tensor, tokens: str
) -> torch.Tensor:
    """Which of the ``L - 1`` next-token positions to distil: those predicting a label (``labels``), or every
    attended token (``all``). Position ``j`` predicts token ``j + 1``."""
    if tokens == "labels":
        if labels is None:
            raise OptionError("tokens", "=labels needs labels in the batch; use tokens=all for unlabelled text.")
        return labels[:, 1:] != -100
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    return mask[:, 1:].bool() & mask[:, :-1].bool()


def from_first_distilled(mask: torch.Tensor) -> int:
    """How many trailing logit columns the loss reads: from the first next-token position any row distils (all
    ``L`` when none does). With ``tokens: labels`` the prompt's logits are never read, so the LM head can skip them
    (``num_logits_to_keep``); :func:`undo_loss` then takes ``mask[:, -(n - 1):]`` with the ``n`` kept columns."""
    width = mask.shape[1] + 1
    cols = mask.any(dim=0).nonzero()
    return width - int(cols[0]) if len(cols) else width


def undo_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, keep: int) -> Any:
    """The model's output with logits for the last ``keep`` positions only, where it takes ``num_logits_to_keep``
    (or ``logits_to_keep``) and ``keep`` is shorter than the sequence; else the full output."""
    arg = keep_arg(model)
    extra = {arg: keep} if arg is not None and keep < input_ids.shape[1] else {}
    return model(input_ids=input_ids, attention_mask=attention_mask, **extra)


def undo_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, cfg: UNDOConfig
) -> torch.Tensor:
    """KL(teacher || student) at the next-token positions in ``mask`` (``[B, L-1]``), over the full vocabulary
    (the paper) or over the teacher's top-K plus a tail bucket (``top_k``)."""
    s, t = student_logits[:, :-1], teacher_logits[:, :-1]
    if cfg.top_k is None:
        return forward_kl_loss(s, t, mask, cfg.temperature)
    mask = mask.bool()
    targets = select_topk(t[mask].float() / cfg.temperature, cfg.top_k)
    if len(targets) == 0:
        return student_logits.sum() * 0.0
    return topk_distillation_loss(s[mask].float() / cfg.temperature, targets, distance="kl")


def label_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL over the label tokens and their count (to average over several batches)."""
    shifted = labels[:, 1:]
    keep = shifted != -100
    if not bool(keep.any()):
        return 0.0, 0
    nll = F.cross_entropy(logits[:, :-1][keep].float(), shifted[keep], reduction="sum")
    return float(nll), int(keep.sum())


def recovery_gap(student_nll: float, teacher_nll: float) -> float:
    """Relative retain-loss gap ``(student - teacher) / teacher``; 0 means the teacher's retain performance."""
    if teacher_nll <= 0:
        return 0.0 if student_nll <= teacher_nll else float("inf")
    return (student_nll - teacher_nll) / teacher_nll


def recovered(gap: float, recovery: float) -> bool:
    """True when the gap is within ``1 - recovery`` (95% recovery = a retain loss at most 5% above the teacher's)."""
    return gap <= 1.0 - recovery + 1e-12


def _full_shape(tensor: torch.Tensor) -> torch.Size:
    """A tensor's shape; a DeepSpeed ZeRO-3 partitioned parameter's whole shape."""
    return tensor.ds_shape if hasattr(tensor, "ds_id") else tensor.shape


@torch.no_grad()
def copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """``target.load_state_dict(source.state_dict())`` (strict; ``RuntimeError`` when they do not fit), also for a
    DeepSpeed ZeRO-3 partitioned ``source`` (UNDO's teacher under ``zero3_init_flag``) into a whole ``target``.

    A partitioned source is gathered one parameter at a time, by one blocking all-gather each. DeepSpeed's gather
    of several parameters at once (``GatheredParameters`` over a list: ``_allgather_params_coalesced``) starts one
    asynchronous all-gather per parameter and waits for the last only; on gloo (CPU processes) the others can still
    be in flight when it returns, so some gathered weights are garbage, on some ranks, in some runs (a few percent of
    gathers of the test's 20-parameter model).
    """
    if not is_zero3_partitioned(source):
        target.load_state_dict(source.state_dict())
        return
    import deepspeed

    src, dst = source.state_dict(keep_vars=True), target.state_dict(keep_vars=True)
    errors = []
    if dst.keys() - src.keys():
        errors.append(f"Missing key(s): {sorted(dst.keys() - src.keys())}")
    if src.keys() - dst.keys():
        errors.append(f"Unexpected key(s): {sorted(src.keys() - dst.keys())}")
    errors += [
        f"size mismatch for {name}: {tuple(_full_shape(src[name]))} in the source, {tuple(tensor.shape)} in the target"
        for name, tensor in dst.items()
        if name in src and _full_shape(src[name]) != tensor.shape
    ]
    if errors:
        raise RuntimeError("; ".join(errors))
    for name, tensor in dst.items():
        value = src[name]
        gathered = deepspeed.zero.GatheredParameters([value]) if hasattr(value, "ds_id") else contextlib.nullcontext()
        with gathered:
            tensor.copy_(value.detach())
