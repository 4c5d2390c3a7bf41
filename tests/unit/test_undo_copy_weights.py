"""``duet_plugin.core.undo.copy_weights``: UNDO's teacher -> student copy (the ZeRO-3 gather itself is tested under
two processes in tests/integration/test_distributed_ou.py)."""

from __future__ import annotations

import pytest
import torch

from duet_plugin.core.undo import copy_weights


def _partitioned(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` as ZeRO-3 leaves it on a rank: every parameter an empty placeholder with its whole shape aside."""
    for p in model.parameters():
        p.ds_id, p.ds_shape = id(p), p.shape
        p.data = torch.empty(0)
    return model


def test_whole_models_copy_like_load_state_dict() -> None:
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    copy_weights(source, target)
    assert torch.equal(source.weight, target.weight) and torch.equal(source.bias, target.bias)
    with pytest.raises(RuntimeError, match="size mismatch"):
        copy_weights(torch.nn.Linear(4, 2), target)


def test_a_partitioned_source_that_does_not_fit_is_refused_before_any_gather() -> None:
    target = torch.nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match=r"size mismatch for weight: \(2, 4\) in the source, \(2, 3\)"):
        copy_weights(_partitioned(torch.nn.Linear(4, 2)), target)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\): \['bias'\]"):
        copy_weights(_partitioned(torch.nn.Linear(3, 2, bias=False)), target)
