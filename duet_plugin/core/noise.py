"""UNDO's shrink-and-perturb (Lee et al., 2025; ``do_corruption`` in the official code).

``p <- (1 - alpha) * p + alpha * beta * N`` with ``N`` Xavier-uniform for 2-D weights; 1-D parameters are only
shrunk. Parameters whose forward multiplies by the weight directly (Llama-style RMSNorm, matched by name) are left
alone by default: shrinking them rescales activations rather than damaging knowledge.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

DEFAULT_EXCLUDE = (r"(^|\.)([a-z_]*norm[a-z_]*)\.weight$",)


@torch.no_grad()
def shrink_and_perturb(
    model: torch.nn.Module,
    alpha: float,
    beta: float,
    include: Sequence[str] = (r".*",),
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    seed: int = 0,
) -> list[str]:
    """Noise ``model`` in place; returns the names of the parameters changed.

    ``include``/``exclude`` are regexes searched in parameter names (a parameter must match an include pattern and no
    exclude pattern). The same seed gives the same weights.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0 = no noise), got {alpha}.")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}.")
    inc = [re.compile(p) for p in include]
    exc = [re.compile(p) for p in exclude]
    chosen = [
        (n, p)
        for n, p in model.named_parameters()
        if any(r.search(n) for r in inc) and not any(r.search(n) for r in exc)
    ]
    if not chosen:
        raise ValueError(
            f"No parameter matches include={list(include)} without matching exclude={list(exclude)}; "
            "check the regexes against model.named_parameters()."
        )
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for _, param in chosen:
        if param.ndim == 2 and alpha * beta != 0:
            fan_out, fan_in = param.shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            noise = torch.empty(param.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
            param.mul_(1.0 - alpha).add_(noise.to(param.device, param.dtype), alpha=alpha * beta)
        else:
            param.mul_(1.0 - alpha)
    return [n for n, _ in chosen]
