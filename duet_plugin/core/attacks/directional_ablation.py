"""Directional ablation: a forgetting direction estimated from the model's own activations, projected out.

Łucki et al. (arXiv 2409.18025) find that unlearning methods can leave the knowledge in place and add a mechanism
that suppresses it, much as refusal in chat models is mediated by one direction of the residual stream (Arditi et
al., 2024). The probe: read the residual stream at a prompt position (``last``: the last prompt token, the one that
predicts the first answer token; ``mean``: the mean over the prompt tokens) for forget prompts and retain prompts,
teacher-forced on the chat-formatted question (causal attention: the answer that follows does not change these
activations). Per layer (``0``: the input of the first decoder block, ``i``: the output of block ``i``), the
difference of the two means, normalised, is a candidate direction ``d``. Ablating it means ``x <- x - (x . d) d`` on
the first block's input and on every block's output, at every position, through forward hooks that are removed
afterwards: the residual stream between blocks carries no component along ``d``, and the model's weights are never
touched. (Arditi et al. also remove it from the attention's write inside each block, before the MLP reads it; here
the stream is cleaned at block boundaries only.)

The layer is either given or chosen as the one whose ablation most raises the teacher-forced answer probability of
a *fitting* part of the forget set (the same part the direction is estimated from), never of the items scored
afterwards: the caller splits the forget set (seeded) and scores the other part.

Cost: one forward over the forget and retain prompts (teacher-forced, the per-item activations kept on the CPU:
``items x (layers + 1) x hidden`` floats), plus, when the layer is chosen, one forward over the fitting part of
the forget set per candidate layer. The model is not copied.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from duet_plugin.core.attacks.logit_lens import decoder_owners

IGNORE_INDEX = -100
POSITIONS = ("last", "mean")
#: Where decoder blocks live (tried on the base model, then on its decoder): Llama/Mistral/Qwen/Gemma/NeoX
#: ``layers``, GPT-2/Falcon/Bloom ``h``, MPT ``blocks``.
LAYER_NAMES = ("layers", "h", "blocks")
#: A direction whose difference-of-means norm is below this is not used (e.g. layer 0 with ``last``: every prompt
#: ends with the same template token).
MIN_NORM = 1e-6


class DirectionalAblationError(ValueError):
    """The model or the data does not fit directional ablation (no decoder blocks found, no prompt tokens, ...)."""


def _unwrap(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)  # peft's PeftModel
    return get_base() if callable(get_base) else model


def find_layers(model: nn.Module, path: str | None = None) -> nn.ModuleList:
    """The model's decoder blocks: the ModuleList at dotted ``path`` (e.g. ``"model.layers"``), else found on the
    base model (``model.layers``, ``transformer.h``, ``gpt_neox.layers``, ``model.decoder.layers``, ...)."""
    model = _unwrap(model)
    if path:
        try:
            found = model.get_submodule(path)
        except AttributeError as err:
            raise DirectionalAblationError(f"{type(model).__name__} has no module {path!r} (layers): {err}") from None
        if not isinstance(found, nn.ModuleList) or not len(found):
            raise DirectionalAblationError(f"{path!r} of {type(model).__name__} is not a list of decoder blocks.")
        return found
    owners = decoder_owners(model)
    tried = []
    for where, owner in owners:
        if not isinstance(owner, nn.Module):
            continue
        for name in LAYER_NAMES:
            module = getattr(owner, name, None)
            if isinstance(module, nn.ModuleList) and len(module):
                return module
            tried.append(f"{where}.{name}")
    raise DirectionalAblationError(
        f"directional_ablation cannot find the decoder blocks of {type(model).__name__} (tried "
        f"{', '.join(tried) or 'no decoder'}); name them with layers_module=<dotted path>, e.g. model.layers."
    )


def _device(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _hidden_of(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, tuple | list) else value


def _with_hidden(value: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *value[1:]) if isinstance(value, tuple | list) else hidden


@contextlib.contextmanager
def _layer_hooks(blocks: nn.ModuleList, edit: Any) -> Iterator[None]:
    """``edit(layer, hidden) -> hidden | None`` on the first block's input (layer 0) and every block's output
    (layer ``i + 1``); every hook is removed on exit, whatever happens inside."""

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if args:
            new = edit(0, args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = edit(0, kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    def post(i: int) -> Any:
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            new = edit(i + 1, _hidden_of(output))
            return None if new is None else _with_hidden(output, new)

        return hook

    handles = [blocks[0].register_forward_pre_hook(pre, with_kwargs=True)]
    try:
        handles += [block.register_forward_hook(post(i)) for i, block in enumerate(blocks)]
        yield
    finally:
        for handle in handles:
            handle.remove()


def project_out(x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``x - (x . d) d`` along the last axis, in float32 (``d`` a unit vector), cast back to ``x``'s dtype."""
    d = direction.to(device=x.device, dtype=torch.float32)
    xf = x.float()
    return (xf - (xf @ d).unsqueeze(-1) * d).to(x.dtype)


@contextlib.contextmanager
def directional_ablation(
    model: nn.Module, direction: torch.Tensor, layers_module: str | None = None
) -> Iterator[nn.Module]:
    """Within the block, every forward of ``model`` has ``direction`` (normalised here) projected out of the residual
    stream: the first decoder block's input and every block's output, at every position. Generation included (the
    cached keys and values are computed from ablated states). The hooks are removed on exit; the weights are never
    changed."""
    norm = float(direction.float().norm())
    if not math.isfinite(norm) or norm < MIN_NORM:
        raise DirectionalAblationError(f"Cannot ablate a direction of norm {norm:g}.")
    unit = direction.detach().float().cpu() / norm
    per_device: dict[torch.device, torch.Tensor] = {}

    def edit(layer: int, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.device not in per_device:
            per_device[hidden.device] = unit.to(hidden.device)
        return project_out(hidden, per_device[hidden.device])

    with _layer_hooks(find_layers(model, layers_module), edit):
        yield model


# -- activations ------------------------------------------------------------------------------------------------


def prompt_mask(labels: torch.Tensor, attention_mask: torch.Tensor | None, position: str = "last") -> torch.Tensor:
    """``[B, L]`` weights of the prompt positions each item's activation averages: the prompt is every attended
    position before the first answer label (all attended positions when an item has none); ``last`` keeps its last
    position (the one predicting the first answer token), ``mean`` all of them, equally weighted."""
    if position not in POSITIONS:
        raise DirectionalAblationError(f"position={position!r}; choose one of {POSITIONS}.")
    attended = torch.ones_like(labels, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    length = labels.shape[1]
    is_answer = labels != IGNORE_INDEX
    first = torch.where(is_answer.any(1), is_answer.float().argmax(1), torch.full_like(labels[:, 0], length))
    prompt = attended & (torch.arange(length, device=labels.device)[None] < first[:, None])
    counts = prompt.sum(1)
    if bool((counts == 0).any()):
        raise DirectionalAblationError("An item has no prompt token before its answer: nothing to read.")
    if position == "mean":
        return prompt.float() / counts[:, None].float()
    last = length - 1 - prompt.flip(1).float().argmax(1)
    return torch.nn.functional.one_hot(last, length).float()


def _inputs(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    device = _device(model)
    out: dict[str, Any] = {"input_ids": batch["input_ids"].to(device), "use_cache": False}
    if batch.get("attention_mask") is not None:
        out["attention_mask"] = batch["attention_mask"].to(device)
    return out


@dataclass
class Activations:
    """Per item, the residual stream at its prompt position(s): ``values[item, layer, hidden]`` (float32, CPU;
    layer ``0`` the first block's input, ``i`` block ``i``'s output), and the items' dataset indices."""

    values: torch.Tensor
    indices: list[Any]

    def take(self, indices: Sequence[Any]) -> torch.Tensor:
        where = {index: row for row, index in enumerate(self.indices)}
        missing = [i for i in indices if i not in where]
        if missing:
            raise DirectionalAblationError(f"No activations for items {missing[:5]}.")
        return self.values[[where[i] for i in indices]]


def collect_activations(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    position: str = "last",
    layers_module: str | None = None,
) -> Activations:
    """One teacher-forced forward per batch (OU's QA items: ``input_ids``, ``attention_mask``, ``labels`` with
    ``-100`` on the prompt; an ``index`` tensor names the items, else 0, 1, ...), the residual stream read at the
    prompt positions of every layer. No gradients; the model is unchanged."""
    blocks = find_layers(model, layers_module)
    parts: list[torch.Tensor] = []
    indices: list[Any] = []
    weights: list[torch.Tensor] = []  # the current batch's prompt weights
    reads: list[torch.Tensor] = []  # the current batch's per-layer reads

    def read(layer: int, hidden: torch.Tensor) -> None:
        reads.append(torch.einsum("bl,blh->bh", weights[0].to(hidden.device), hidden.float()).cpu())

    with _eval_mode(model), _layer_hooks(blocks, read):
        for batch in batches:
            if "input_ids" not in batch or "labels" not in batch:
                raise DirectionalAblationError(
                    f"directional_ablation reads teacher-forced QA items (input_ids, labels), got keys "
                    f"{sorted(batch)} (a multi-answer dataset such as TOFU's *_perturbed: use the plain split)."
                )
            if batch["input_ids"].shape != batch["labels"].shape:
                raise DirectionalAblationError(
                    f"input_ids {tuple(batch['input_ids'].shape)} and labels {tuple(batch['labels'].shape)} differ: "
                    "directional_ablation needs teacher-forced items (predict_with_generate: false)."
                )
            weights[:] = [prompt_mask(batch["labels"], batch.get("attention_mask"), position)]
            reads.clear()
            model(**_inputs(model, batch))
            if len(reads) != len(blocks) + 1:
                raise DirectionalAblationError(
                    f"{len(reads)} residual reads for {len(blocks)} blocks in one forward (expected "
                    f"{len(blocks) + 1}); name the decoder blocks with layers_module=<dotted path>."
                )
            parts.append(torch.stack(reads, dim=1))
            index = batch.get("index")
            n = len(batch["input_ids"])
            indices += index.tolist() if index is not None else list(range(len(indices), len(indices) + n))
    if not parts:
        raise DirectionalAblationError("directional_ablation got no batch (empty dataset).")
    return Activations(torch.cat(parts), indices)


# -- directions -------------------------------------------------------------------------------------------------


@dataclass
class Directions:
    """Per layer: the unit difference-of-means direction (zeros where its norm is below :data:`MIN_NORM`), the raw
    norm of the difference, that norm over the mean activation norm, and the separation of the two sets along the
    direction (difference of the mean projections over their pooled standard deviation, Cohen's d)."""

    directions: torch.Tensor
    norms: torch.Tensor
    relative_norms: torch.Tensor
    separations: torch.Tensor

    @property
    def n_layers(self) -> int:
        return self.directions.shape[0]

    def usable(self, layer: int) -> bool:
        return bool(self.norms[layer] >= MIN_NORM)


def separation(forget: torch.Tensor, retain: torch.Tensor, direction: torch.Tensor) -> float:
    """Cohen's d of the projections of ``forget`` and ``retain`` (``[N, hidden]``) on ``direction``; NaN when
    undefined (fewer than two items in all, or no spread)."""
    pf, pr = forget.double() @ direction.double(), retain.double() @ direction.double()
    n_f, n_r = len(pf), len(pr)
    if n_f + n_r < 3:
        return float("nan")
    var = (((pf - pf.mean()) ** 2).sum() + ((pr - pr.mean()) ** 2).sum()) / (n_f + n_r - 2)
    if float(var) <= 0:
        return float("nan")
    return float((pf.mean() - pr.mean()) / var.sqrt())


def difference_of_means(forget: torch.Tensor, retain: torch.Tensor) -> Directions:
    """The candidate direction of every layer from ``[N, layers, hidden]`` activations of forget and retain items:
    ``mean(forget) - mean(retain)``, normalised."""
    if forget.ndim != 3 or retain.ndim != 3 or forget.shape[1:] != retain.shape[1:]:
        raise DirectionalAblationError(
            f"forget {tuple(forget.shape)} and retain {tuple(retain.shape)} activations must be [N, layers, hidden]."
        )
    if not len(forget) or not len(retain):
        raise DirectionalAblationError("difference of means needs at least one forget and one retain item.")
    diff = forget.double().mean(0) - retain.double().mean(0)
    norms = diff.norm(dim=-1)
    usable = norms >= MIN_NORM
    directions = torch.where(usable[:, None], diff / norms.clamp_min(MIN_NORM)[:, None], torch.zeros_like(diff))
    scale = torch.cat([forget, retain]).double().norm(dim=-1).mean(0)
    seps = [
        separation(forget[:, i], retain[:, i], directions[i]) if usable[i] else float("nan")
        for i in range(diff.shape[0])
    ]
    return Directions(
        directions=directions.float(),
        norms=norms.float(),
        relative_norms=(norms / scale.clamp_min(1e-12)).float(),
        separations=torch.tensor(seps, dtype=torch.float32),
    )


# -- scoring and layer choice -----------------------------------------------------------------------------------


def answer_probability(
    model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]
) -> tuple[torch.Tensor, list[Any]]:
    """Per item, exp of the mean log-probability of its answer tokens, teacher-forced (OU's ``probability``), and
    the items' indices; NaN for an item without answer tokens."""
    values: list[torch.Tensor] = []
    indices: list[Any] = []
    with _eval_mode(model):
        for batch in batches:
            logits = model(**_inputs(model, batch)).logits[:, :-1].float()
            targets = batch["labels"][:, 1:].to(logits.device)
            keep = targets != IGNORE_INDEX
            log_probs = torch.log_softmax(logits, -1).gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)
            mean = (log_probs * keep).sum(1) / keep.sum(1)  # NaN where an item has no answer token
            values.append(mean.exp().double().cpu())
            index = batch.get("index")
            n = len(batch["input_ids"])
            indices += index.tolist() if index is not None else list(range(len(indices), len(indices) + n))
    return (torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)), indices


def _nanmean(values: torch.Tensor) -> float | None:
    keep = ~values.isnan()
    return float(values[keep].mean()) if bool(keep.any()) else None


@dataclass
class LayerChoice:
    """The chosen layer and, per candidate layer, the mean answer probability of the fitting items with its
    direction ablated (``scores``; ``unablated``: without ablation)."""

    layer: int
    scores: dict[int, float | None]
    unablated: float | None


def choose_layer(
    model: nn.Module,
    directions: Directions,
    fit_batches: Iterable[Mapping[str, torch.Tensor]],
    candidates: Sequence[int] | None = None,
    layers_module: str | None = None,
) -> LayerChoice:
    """The candidate layer (default: every block's output, ``1..n_blocks``) whose direction, ablated everywhere,
    gives the fitting items' answers the highest mean probability (first on a tie). ``fit_batches`` must be
    re-iterable (a list or a DataLoader): it is read once per candidate, plus once unablated."""
    n_layers = directions.n_layers
    layers = list(range(1, n_layers)) if candidates is None else [int(c) for c in candidates]
    bad = [c for c in layers if not 0 <= c < n_layers]
    if bad or not layers:
        raise DirectionalAblationError(f"candidate layers {layers} must lie in 0..{n_layers - 1} (0 = embeddings).")
    unablated = _nanmean(answer_probability(model, fit_batches)[0])
    scores: dict[int, float | None] = {}
    for layer in layers:
        if not directions.usable(layer):
            scores[layer] = None
            continue
        with directional_ablation(model, directions.directions[layer], layers_module):
            scores[layer] = _nanmean(answer_probability(model, fit_batches)[0])
    ranked = [(v, -c) for c, v in scores.items() if v is not None and not math.isnan(v)]
    if not ranked:
        raise DirectionalAblationError(
            f"No candidate layer in {layers} has a usable direction (forget and retain means coincide) or a scored "
            "answer."
        )
    return LayerChoice(layer=-max(ranked)[1], scores=scores, unablated=unablated)


def layer_table(directions: Directions, choice: LayerChoice | None = None) -> list[dict[str, Any]]:
    """Per layer: ``norm``, ``relative_norm``, ``separation`` and, for the candidates of ``choice``,
    ``fit_prob_ablated``; NaN as None (JSON)."""

    def num(value: float) -> float | None:
        return None if math.isnan(value) else float(value)

    rows = []
    for i in range(directions.n_layers):
        row: dict[str, Any] = {
            "layer": i,
            "norm": float(directions.norms[i]),
            "relative_norm": float(directions.relative_norms[i]),
            "separation": num(float(directions.separations[i])),
        }
        if choice is not None and i in choice.scores:
            row["fit_prob_ablated"] = choice.scores[i]
        rows.append(row)
    return rows
