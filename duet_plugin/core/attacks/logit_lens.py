"""Logit lens: how readable the true answer is from every layer's residual stream, teacher-forced.

An unlearned model whose last layers only suppress the answer may still carry it in the middle of the network. For
each layer ``i`` (``0``: the embeddings, ``i``: after decoder block ``i``, the last one: what the final norm
receives), the model's own final norm and LM head are applied to the residual stream at the answer positions
(position ``j`` predicts token ``j + 1``, as in teacher-forced scoring), and the true token's probability,
log-probability, rank (``0`` = top-1) and top-1 hit are averaged over each item's answer tokens, then over items.

One forward per batch with ``output_hidden_states=True``; the final norm's input is captured by a hook (HF models
hand back the last hidden state *after* the final norm), so every layer goes through the same norm + head. The head
is applied layer by layer to the answer positions only, ``chunk_size`` tokens at a time: never ``[layers, B, L, V]``.
The last layer's log-probabilities are compared with the model's own logits (``final_logprob_gap``): 0 up to
rounding when the lens reproduces the model, larger for models that change the logits after the head (e.g. logit
soft-capping), where the intermediate layers' values are only approximate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

IGNORE_INDEX = -100
#: Per-layer statistics, each averaged over an item's answer tokens, then over items.
STATS = ("prob", "log_prob", "rank", "top1")
#: Attribute names of the final norm on a model's decoder (Llama/Mistral/Qwen/Gemma: ``norm``; GPT-2, Falcon, Bloom:
#: ``ln_f``; GPT-NeoX, OPT: ``final_layer_norm``; Phi: ``final_layernorm``; Mamba: ``norm_f``).
NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f")
DEFAULT_CHUNK = 1024


class LogitLensError(ValueError):
    """The model or the batch does not fit the logit lens (no final norm found, no answer tokens, ...)."""


def _unwrap(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)  # peft's PeftModel
    return get_base() if callable(get_base) else model


def decoder_owners(model: Any) -> list[tuple[str, Any]]:
    """Where a causal LM keeps its decoder's parts, as ``(name, module)`` to search in order: ``get_decoder()``,
    the base model (``base_model_prefix``) and its ``decoder``; entries may be None."""
    owners: list[tuple[str, Any]] = []
    with contextlib.suppress(AttributeError, NotImplementedError, TypeError):
        owners.append(("get_decoder()", model.get_decoder()))
    prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, prefix, None) if prefix else None
    return [*owners, (prefix, base), (f"{prefix}.decoder", getattr(base, "decoder", None))]


def find_final_norm(model: nn.Module, path: str | None = None) -> nn.Module:
    """The model's final norm: the module at dotted ``path`` (e.g. ``"model.norm"``), else found on its decoder."""
    model = _unwrap(model)
    if path:
        try:
            return model.get_submodule(path)
        except AttributeError as err:
            raise LogitLensError(f"{type(model).__name__} has no module {path!r} (final_norm): {err}") from None
    owners = decoder_owners(model)
    tried = []
    for where, owner in owners:
        if not isinstance(owner, nn.Module):
            continue
        for name in NORM_NAMES:
            module = getattr(owner, name, None)
            if isinstance(module, nn.Module):
                return module
            tried.append(f"{where}.{name}")
    raise LogitLensError(
        f"logit_lens cannot find the final norm of {type(model).__name__} (tried {', '.join(tried) or 'no decoder'}); "
        "name it with final_norm=<dotted module path>, e.g. final_norm=model.norm."
    )


def find_head(model: nn.Module) -> nn.Module:
    head = _unwrap(model).get_output_embeddings()
    if head is None:
        raise LogitLensError(f"{type(_unwrap(model)).__name__} has no output embeddings (LM head) for the logit lens.")
    return head


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _score(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability and rank (entries with a strictly higher logit) of each row's target."""
    logits = logits.float()
    true = logits.gather(1, targets[:, None])
    log_prob = (true - torch.logsumexp(logits, dim=-1, keepdim=True)).squeeze(1)
    rank = (logits > true).sum(dim=-1)
    return log_prob, rank


@dataclass
class LensBatch:
    """One batch's logit lens: per-item means ``values[stat]`` of shape ``[n_layers, B]`` (NaN for an item without
    answer tokens), answer tokens per item, and the largest gap between the last layer's log-probabilities and the
    model's own."""

    values: dict[str, torch.Tensor]
    tokens: torch.Tensor
    final_logprob_gap: float


def logit_lens_batch(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    final_norm: nn.Module | str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> LensBatch:
    """The logit lens on one teacher-forced batch (``input_ids``, ``attention_mask``, ``labels`` with ``-100``
    outside the answer, OU's QA format). No gradients; the model's parameters and train/eval mode are unchanged."""
    if chunk_size < 1:
        raise LogitLensError(f"chunk_size must be >= 1, got {chunk_size}.")
    if "input_ids" not in batch or "labels" not in batch:
        raise LogitLensError(
            f"logit_lens needs teacher-forced items with input_ids and labels, got keys {sorted(batch)} "
            "(a multi-answer dataset such as TOFU's *_perturbed gives one batch per answer: use the plain split)."
        )
    norm = final_norm if isinstance(final_norm, nn.Module) else find_final_norm(model, final_norm)
    head = find_head(model)
    head_device = _device(head)
    input_ids, labels = batch["input_ids"], batch["labels"]
    if input_ids.shape != labels.shape or input_ids.ndim != 2:
        raise LogitLensError(f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} must be [B, L].")
    size = input_ids.shape[0]
    targets_at = labels[:, 1:].cpu()
    b_idx, t_idx = (targets_at != IGNORE_INDEX).nonzero(as_tuple=True)
    targets = targets_at[b_idx, t_idx].to(head_device)
    tokens = torch.bincount(b_idx, minlength=size)

    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        captured.append(args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor)))

    device = _device(model)
    inputs = {"input_ids": input_ids.to(device), "output_hidden_states": True, "use_cache": False}
    if batch.get("attention_mask") is not None:
        inputs["attention_mask"] = batch["attention_mask"].to(device)
    with _eval_mode(model):
        handle = norm.register_forward_hook(capture, with_kwargs=True)
        try:
            out = model(**inputs)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise LogitLensError(
                f"The final norm of {type(_unwrap(model)).__name__} ran {len(captured)} times in one forward "
                "(expected once); name the module that feeds the LM head with final_norm=<dotted path>."
            )
        if out.hidden_states is None:
            raise LogitLensError(f"{type(_unwrap(model)).__name__} returned no hidden states.")
        layers = [*out.hidden_states[:-1], captured[0]]
        logits = out.logits
        del out

        def chunks(tensor: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
            for start in range(0, len(b_idx), chunk_size):
                span = slice(start, start + chunk_size)
                rows = tensor[b_idx[span].to(tensor.device), t_idx[span].to(tensor.device)]
                yield span, rows.to(head_device)

        def cat(parts: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(parts) if parts else torch.zeros(0, device=head_device)

        model_log_prob = cat([_score(rows, targets[span])[0] for span, rows in chunks(logits[:, :-1])])
        del logits
        per_layer: dict[str, list[torch.Tensor]] = {s: [] for s in STATS}
        for hidden in layers:
            scored = [_score(head(norm(rows)), targets[span]) for span, rows in chunks(hidden)]
            log_prob, rank = cat([lp for lp, _ in scored]), cat([r for _, r in scored])
            for stat, value in (("prob", log_prob.exp()), ("log_prob", log_prob), ("rank", rank), ("top1", rank == 0)):
                per_layer[stat].append(_per_item(value, b_idx, tokens))
        # log_prob is the last layer's here: the lens must reproduce the model's own prediction there
        gap = float((log_prob - model_log_prob).abs().max()) if len(b_idx) else 0.0
    return LensBatch({s: torch.stack(v) for s, v in per_layer.items()}, tokens, gap)


def _per_item(values: torch.Tensor, item: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    sums = torch.zeros(len(tokens), dtype=torch.float64).index_add_(0, item, values.detach().double().cpu())
    return sums / tokens.double()  # NaN where an item has no answer token


@dataclass
class LensRun:
    """The logit lens over a dataset: per-item values ``[n_layers, n_items]``, item indices and token counts."""

    values: dict[str, torch.Tensor]
    tokens: torch.Tensor
    indices: list[Any]
    final_logprob_gap: float

    @property
    def n_layers(self) -> int:
        return next(iter(self.values.values())).shape[0]

    def summary(self) -> dict[str, Any]:
        """Per layer (``value_by_layer[i]``, ``0`` = embeddings) the means over items with answer tokens; the layer
        where the true answer is most probable (``best_layer``, first on a tie) and its values; the final layer's."""
        keep = self.tokens > 0
        if not bool(keep.any()):
            raise LogitLensError("No item has answer tokens (every label is -100): nothing for the logit lens to score")
        means = {s: v[:, keep].mean(dim=1) for s, v in self.values.items()}
        by_layer = [{s: float(means[s][i]) for s in STATS} for i in range(self.n_layers)]
        best = int(torch.argmax(means["prob"]))
        return {
            "value_by_layer": by_layer,
            "best_layer": best,
            "best": dict(by_layer[best]),
            "final": dict(by_layer[-1]),
            "num_layers": self.n_layers,
            "n_items": int(keep.sum()),
            "n_tokens": int(self.tokens.sum()),
            "skipped_items": int((~keep).sum()),
            "final_logprob_gap": self.final_logprob_gap,
        }

    def by_index(self, stats: Iterable[str] = ("prob", "log_prob", "rank")) -> dict[Any, dict[str, Any]]:
        """Per item: each stat per layer (``None`` for an item without answer tokens) and its answer token count."""
        out = {}
        for col, index in enumerate(self.indices):
            n = int(self.tokens[col])
            row: dict[str, Any] = {s: self.values[s][:, col].tolist() if n else None for s in stats}
            out[index] = {**row, "tokens": n}
        return out


def run_logit_lens(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    final_norm: nn.Module | str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> LensRun:
    """The logit lens over batches; an ``index`` tensor in a batch names its items (else 0, 1, ...)."""
    norm = final_norm if isinstance(final_norm, nn.Module) else find_final_norm(model, final_norm)
    parts: list[LensBatch] = []
    indices: list[Any] = []
    for batch in batches:
        batch = dict(batch)
        index = batch.pop("index", None)
        part = logit_lens_batch(model, batch, final_norm=norm, chunk_size=chunk_size)
        n = part.tokens.numel()
        indices += index.tolist() if index is not None else list(range(len(indices), len(indices) + n))
        parts.append(part)
    if not parts:
        raise LogitLensError("logit_lens got no batch (empty dataset).")
    return LensRun(
        values={s: torch.cat([p.values[s] for p in parts], dim=1) for s in STATS},
        tokens=torch.cat([p.tokens for p in parts]),
        indices=indices,
        final_logprob_gap=max(p.final_logprob_gap for p in parts),
    )
