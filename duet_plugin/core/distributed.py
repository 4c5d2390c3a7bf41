"""Data-parallel helpers for the teacher: each rank's share of the queries, gathering results, ZeRO-3 detection.

Framework-free (``torch.distributed`` only). With one process every function is the identity, so single-device code
paths are unchanged.

Under DeepSpeed ZeRO-3 every forward is a collective (each layer's weights are all-gathered from the ranks that hold
their shards), so all ranks must run the same number of forwards, and generation must keep stepping until every
rank is done (``synced_gpus``). :func:`shard_indices` therefore gives every rank the same number of queries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when none is initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s share of ``range(n)``: every ``world_size``-th index from ``rank``, padded by wrapping
    around so that every rank gets ``ceil(n / world_size)`` indices (the same number of forwards on every rank).

    The union over ranks is ``range(n)``; a padded index is computed twice, on two ranks, with the same result.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} process(es).")
    if n == 0:
        return []
    per_rank = math.ceil(n / world_size)
    own = list(range(rank, n, world_size))
    return own + [(rank + world_size * (len(own) + j)) % n for j in range(per_rank - len(own))]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` with one process."""
    _, size = world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` averaged over the processes (a collective: every rank calls it at the same point), itself with
    one process."""
    _, size = world()
    if size == 1:
        return values
    out = values.clone()
    dist.all_reduce(out)
    return out / size


def is_zero3_partitioned(models: Any | Iterable[Any]) -> bool:
    """Whether any of ``models`` holds DeepSpeed ZeRO-3 partitioned parameters (they carry a ``ds_id``): then every
    forward is a collective and generation must run with ``synced_gpus=True``."""
    if isinstance(models, torch.nn.Module) or hasattr(models, "parameters"):
        models = [models]
    for model in models:
        params = getattr(model, "parameters", None)
        if params is not None and any(hasattr(p, "ds_id") for p in params()):
            return True
    return False
