"""Round-to-nearest quantization: the grid, the error bound, the expected error, and the model left untouched."""

from __future__ import annotations

import pytest
import torch

from duet_plugin.core.attacks.quantization import quantize_tensor, quantized_copy


@pytest.mark.parametrize("bits", [4, 8])
def test_values_lie_on_the_per_row_grid_within_half_a_step(bits: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    q = quantize_tensor(w, bits)
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=1, keepdim=True) / qmax
    levels = q / scale
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    assert levels.abs().max() <= qmax + 1e-4
    assert torch.all((q - w).abs() <= scale / 2 + 1e-6)
    # The row maximum is representable exactly.
    rows = torch.arange(16)
    idx = w.abs().argmax(dim=1)
    torch.testing.assert_close(q[rows, idx], w[rows, idx])


def test_int4_error_is_the_uniform_rounding_error() -> None:
    """Rounding error is ~uniform on [-s/2, s/2]: its mean square is s^2 / 12 per row."""
    torch.manual_seed(1)
    w = torch.randn(64, 4096)
    q = quantize_tensor(w, 4)
    scale = w.abs().amax(dim=1) / 7
    mse = (q - w).pow(2).mean(dim=1)
    ratio = (mse / (scale.pow(2) / 12)).mean().item()
    assert ratio == pytest.approx(1.0, rel=0.1)
    assert (quantize_tensor(w, 8) - w).pow(2).mean() < (q - w).pow(2).mean() / 100


def test_group_size_uses_one_scale_per_group() -> None:
    w = torch.tensor([[1.0, 0.6, 100.0, 50.0]])
    per_row = quantize_tensor(w, 4)
    grouped = quantize_tensor(w, 4, group_size=2)
    assert grouped[0, 0] == pytest.approx(1.0) and grouped[0, 1] == pytest.approx(4 / 7)  # 0.6 / (1/7) = 4.2
    assert per_row[0, 0] == 0.0 and per_row[0, 1] == 0.0  # lost against the row maximum 100
    with pytest.raises(ValueError, match="must divide"):
        quantize_tensor(w, 4, group_size=3)
    with pytest.raises(ValueError, match="bits"):
        quantize_tensor(w, 1)


def test_quantized_copy_leaves_the_model_bit_identical(digest, tiny_model) -> None:
    before = digest(tiny_model)
    attacked, report = quantized_copy(tiny_model, bits=4)
    assert digest(tiny_model) == before
    assert report.names and all("norm" not in n and "embed" not in n for n in report.names)
    assert 0.01 < report.relative_error < 0.5
    src = dict(tiny_model.named_parameters())
    for name, p in attacked.named_parameters():
        changed = not torch.equal(p, src[name])
        assert changed == (name in report.names), name
    _, report8 = quantized_copy(tiny_model, bits=8)
    assert report8.relative_error < report.relative_error / 8
    with pytest.raises(ValueError, match="No 2-D parameter matches"):
        quantized_copy(tiny_model, bits=4, include=[r"nothing_here"])


def test_bitsandbytes_types_are_checked_before_any_compute() -> None:
    from duet_plugin.core.attacks.quantization import check_scheme

    assert check_scheme(4) == 4 and check_scheme("8") == 8
    with pytest.raises(ValueError, match="Unknown quantization 'int3'"):
        check_scheme("int3")
    with pytest.raises(ValueError, match=r"2\.\.16"):
        check_scheme(1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"need a CUDA GPU; on this machine use RTN bit widths"):
            check_scheme("nf4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes' 4-bit kernels need a CUDA GPU")
def test_nf4_roundtrip_is_what_bitsandbytes_computes_with(tiny_model, digest) -> None:
    from bitsandbytes import functional as bnb_functional

    from duet_plugin.core.attacks.quantization import quantized_copy

    model = tiny_model.cuda()
    before = digest(model)
    attacked, report = quantized_copy(model, "nf4")
    assert digest(model) == before and report.bits == "nf4" and 0 < report.relative_error < 0.2
    name = report.names[0]
    w = dict(model.named_parameters())[name].detach()
    packed, state = bnb_functional.quantize_4bit(w, quant_type="nf4")
    expected = bnb_functional.dequantize_4bit(packed, state, quant_type="nf4")
    assert torch.equal(dict(attacked.named_parameters())[name].detach(), expected)
    model.cpu()
