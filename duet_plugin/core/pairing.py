"""Which record of each stream a training item reads, decided by its position alone, so that the queries a run will
draw are known before it starts.

OU pairs each forget item with a retain record drawn from the global RNG when the item is read. Then nothing but the
run itself says which retain queries it uses, and a precomputed teacher has to cover the whole split (a TOFU retain
split is 20x the demo's). Here the training sampler yields positions ``0, 1, 2, ...`` (epoch ``e`` yields
``e*N .. (e+1)*N - 1`` for an anchor stream of ``N`` records), and position ``p`` reads:

- the anchor stream's record ``perm_e[p mod N]``, a seeded permutation per epoch (the shuffle);
- every other stream's record at position ``p`` of that stream's own walk: seeded permutations of its records, one
  after the other, so no record repeats before every record has been drawn once.

:meth:`StreamDraws.used` gives, for the first ``n`` positions, the records of every stream that training reads: the
only queries whose teacher targets are needed. The draws depend on the seed and the position, not on the process
layout or on dataloader workers, so every rank and a resumed run agree.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping

import torch
from torch.utils.data import Sampler


def _permutation(n: int, seed: int, stream: str, cycle: int) -> list[int]:
    digest = hashlib.blake2b(f"{seed}/{stream}/{cycle}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return torch.randperm(n, generator=generator).tolist()


class StreamDraws:
    """The record of every stream read at each training position (see the module docstring).

    Args:
        sizes: records per stream (every stream non-empty).
        anchor: the stream whose records define an epoch (``forget``, as OU's ``ForgetRetainDataset``).
        seed: the draws' seed (the trainer passes ``data_seed``, else ``seed``).
    """

    def __init__(self, sizes: Mapping[str, int], anchor: str = "forget", seed: int = 0) -> None:
        if anchor not in sizes:
            raise ValueError(f"The anchor stream {anchor!r} is missing; streams: {sorted(sizes)}.")
        empty = sorted(s for s, n in sizes.items() if n < 1)
        if empty:
            raise ValueError(f"Stream(s) {empty} have no records to draw.")
        self.sizes, self.anchor, self.seed = dict(sizes), anchor, seed
        self._perms: dict[tuple[str, int], list[int]] = {}

    def _walk(self, stream: str, position: int) -> int:
        n = self.sizes[stream]
        cycle, offset = divmod(position, n)
        key = (stream, cycle)
        if key not in self._perms:
            self._perms[key] = _permutation(n, self.seed, stream, cycle)
        return self._perms[key][offset]

    def item(self, position: int) -> dict[str, int]:
        """``{stream: record index}`` read at ``position`` (any integer >= 0)."""
        if position < 0:
            raise IndexError(f"Training positions start at 0, got {position}.")
        return {s: self._walk(s, position) for s in self.sizes}

    def used(self, positions: int) -> dict[str, list[int]]:
        """Per stream, the sorted record indices read by positions ``0 .. positions - 1``."""
        used: dict[str, set[int]] = {s: set() for s in self.sizes}
        for stream, n in self.sizes.items():
            full, rest = divmod(positions, n)
            if full:  # a whole walk cycle reads every record
                used[stream] = set(range(n))
            else:
                used[stream] = {self._walk(stream, p) for p in range(rest)}
        return {s: sorted(v) for s, v in used.items()}


def positions_drawn(records: int, per_round: int, rounds: int) -> int:
    """How many positions ``rounds`` rounds of ``per_round`` items (a per-device batch times the processes) read
    from epochs of ``records`` positions, an epoch's last round possibly short (it does not run into the next)."""
    if records < 1 or per_round < 1:
        raise ValueError(f"records and per_round must be >= 1, got {records} and {per_round}.")
    rounds_per_epoch = math.ceil(records / per_round)
    full, rest = divmod(max(rounds, 0), rounds_per_epoch)
    return full * records + min(records, rest * per_round)


class EpochPositions(Sampler[int]):
    """The training sampler of :class:`StreamDraws`: epoch ``e`` yields positions ``e*n .. (e+1)*n - 1`` in order
    (the shuffle is the draws'). ``set_epoch`` picks the epoch; without it each pass starts the next one."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return iter(range(epoch * self.n, (epoch + 1) * self.n))

    def __len__(self) -> int:
        return self.n
