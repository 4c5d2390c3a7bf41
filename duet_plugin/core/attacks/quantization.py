"""Round-to-nearest weight quantization (the quantization attack): does the forgetting survive int8/int4 weights?

Unlearned models that only moved their weights a little can get the knowledge back when the weights are rounded
(Zhang et al., 2024, "Catastrophic failure of LLM unlearning via quantization"). This simulates symmetric per-channel
(or per-group) round-to-nearest quantization on a copy, in the original dtype: ``w' = scale * clamp(round(w / scale))``
with one ``scale = max|w| / (2^(bits-1) - 1)`` per output channel (row) or per group of ``group_size`` inputs.
On a CUDA GPU with bitsandbytes, ``"nf4"``/``"fp4"`` instead round-trip each weight through bitsandbytes' own 4-bit
kernels (blocks of 64, as ``load_in_4bit`` stores them), i.e. exactly the weights a 4-bit deployment computes with.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: Linear weights only, by default: embeddings, norms and biases stay in full precision, as in common int4/int8 schemes.
DEFAULT_INCLUDE = (r"(^|\.)(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|lm_head)\.weight$",)
#: bitsandbytes 4-bit data types (CUDA only).
BNB_SCHEMES = ("nf4", "fp4")


@dataclass
class QuantizationReport:
    """What was quantized: parameter names, and the relative error ``||w' - w|| / ||w||`` over all of them."""

    bits: int | str
    names: list[str]
    relative_error: float


def quantize_tensor(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Symmetric round-to-nearest of a 2-D ``[out, in]`` weight, per row (or per ``group_size`` columns)."""
    if bits < 2 or bits > 16:
        raise ValueError(f"bits must be in 2..16, got {bits}.")
    if weight.ndim != 2:
        raise ValueError(f"Only 2-D weights are quantized per channel, got shape {tuple(weight.shape)}.")
    out_features, in_features = weight.shape
    w = weight.detach().float()
    if group_size is not None:
        if group_size < 1 or in_features % group_size:
            raise ValueError(f"group_size={group_size} must divide the input width {in_features}.")
        w = w.reshape(out_features, in_features // group_size, group_size)
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / qmax
    q = (w / scale).round().clamp(-qmax, qmax) * scale
    return q.reshape(out_features, in_features).to(weight.dtype)


def check_scheme(bits: int | str) -> int | str:
    """Validate a quantization scheme before any compute: an RTN bit width (2..16) or a bitsandbytes 4-bit type
    (needs a CUDA GPU and bitsandbytes)."""
    if isinstance(bits, str) and not bits.isdigit():
        if bits not in BNB_SCHEMES:
            raise ValueError(
                f"Unknown quantization {bits!r}: use an RTN bit width (e.g. 8, 4) or one of {BNB_SCHEMES}."
            )
        if not torch.cuda.is_available():
            raise ValueError(
                f"bits {bits!r} runs bitsandbytes' 4-bit kernels, which need a CUDA GPU; on this machine use RTN bit "
                "widths (bits: [8, 4])."
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise ValueError(f"bits {bits!r} needs bitsandbytes: pip install bitsandbytes.") from err
        return bits
    width = int(bits)
    if width < 2 or width > 16:
        raise ValueError(f"bits must be in 2..16, got {bits}.")
    return width


def bnb_roundtrip(weight: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64) -> torch.Tensor:
    """``weight`` quantized and dequantized by bitsandbytes' 4-bit kernels (on the GPU), in its own dtype/device."""
    from bitsandbytes import functional as bnb_functional

    w = weight.detach().to("cuda")
    packed, state = bnb_functional.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)
    return bnb_functional.dequantize_4bit(packed, state, quant_type=quant_type).to(weight.device, weight.dtype)


@torch.no_grad()
def quantized_copy(
    model: torch.nn.Module,
    bits: int | str,
    include: Sequence[str] = DEFAULT_INCLUDE,
    exclude: Sequence[str] = (),
    group_size: int | None = None,
) -> tuple[torch.nn.Module, QuantizationReport]:
    """A deep copy of ``model`` with its matching 2-D weights quantized (RTN ``bits`` or a bitsandbytes 4-bit type);
    ``model`` itself is left untouched."""
    scheme = check_scheme(bits)
    inc = [re.compile(p) for p in include]
    exc = [re.compile(p) for p in exclude]
    attacked = copy.deepcopy(model)
    names, err, norm = [], 0.0, 0.0
    for name, param in attacked.named_parameters():
        if param.ndim != 2 or not any(r.search(name) for r in inc) or any(r.search(name) for r in exc):
            continue
        q = bnb_roundtrip(param, scheme) if isinstance(scheme, str) else quantize_tensor(param, scheme, group_size)
        err += float((q.float() - param.float()).pow(2).sum())
        norm += float(param.float().pow(2).sum())
        param.copy_(q)
        names.append(name)
    if not names:
        raise ValueError(
            f"No 2-D parameter matches include={list(include)} without matching exclude={list(exclude)}; "
            "check the regexes against model.named_parameters()."
        )
    return attacked, QuantizationReport(scheme, names, (err / norm) ** 0.5 if norm else 0.0)
