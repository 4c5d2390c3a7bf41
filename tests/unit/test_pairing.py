"""Position-determined draws (core/pairing.py): what a run reads is known before it starts."""

from __future__ import annotations

import pytest
from torch.utils.data import BatchSampler, DataLoader

from duet_plugin.core.pairing import EpochPositions, StreamDraws, positions_drawn

SIZES = {"forget": 5, "retain": 13, "adversarial": 3}


def test_the_anchor_is_shuffled_once_per_epoch_and_every_stream_walks_its_records_without_repeats() -> None:
    draws = StreamDraws(SIZES, seed=1)
    for epoch in range(3):
        anchor = [draws.item(p)["forget"] for p in range(epoch * 5, (epoch + 1) * 5)]
        assert sorted(anchor) == list(range(5))
    firsts = [[draws.item(p)["forget"] for p in range(e * 5, (e + 1) * 5)] for e in range(3)]
    assert len({tuple(f) for f in firsts}) > 1  # reshuffled between epochs
    retain = [draws.item(p)["retain"] for p in range(26)]
    assert sorted(retain[:13]) == list(range(13)) and sorted(retain[13:]) == list(range(13))
    assert retain[:13] != retain[13:]


def test_draws_depend_on_seed_and_position_only() -> None:
    a, b, c = StreamDraws(SIZES, seed=3), StreamDraws(SIZES, seed=3), StreamDraws(SIZES, seed=4)
    order = [9, 0, 31, 2, 9]  # any order of reads (ranks, workers, a resumed run) gives the same records
    assert [a.item(p) for p in order] == [b.item(p) for p in reversed(order)][::-1]
    assert [a.item(p) for p in range(20)] != [c.item(p) for p in range(20)]


@pytest.mark.parametrize("positions", [0, 1, 4, 5, 12, 14, 40])
def test_used_is_exactly_what_the_positions_read(positions: int) -> None:
    draws = StreamDraws(SIZES, seed=7)
    expected = {s: sorted({draws.item(p)[s] for p in range(positions)}) for s in SIZES}
    assert draws.used(positions) == expected


def test_bad_streams_are_refused() -> None:
    with pytest.raises(ValueError, match="anchor stream 'forget' is missing"):
        StreamDraws({"retain": 3})
    with pytest.raises(ValueError, match=r"\['retain'\] have no records"):
        StreamDraws({"forget": 3, "retain": 0})


def _simulated(records: int, per_round: int, rounds: int) -> int:
    """Positions a loader of per_round-sized batches over EpochPositions reads in `rounds` batches."""
    sampler, read, left = EpochPositions(records), 0, rounds
    while left:
        for batch in BatchSampler(sampler, per_round, drop_last=False):
            read += len(batch)
            left -= 1
            if not left:
                break
    return read


@pytest.mark.parametrize(("records", "per_round", "rounds"), [(40, 4, 3), (40, 4, 10), (40, 4, 23), (7, 3, 5)])
def test_positions_drawn_matches_a_loader(records: int, per_round: int, rounds: int) -> None:
    assert positions_drawn(records, per_round, rounds) == _simulated(records, per_round, rounds)


def test_epoch_positions_follow_set_epoch_and_advance_without_it() -> None:
    sampler = EpochPositions(4)
    assert list(sampler) == [0, 1, 2, 3]
    assert list(sampler) == [4, 5, 6, 7]
    sampler.set_epoch(5)
    assert next(iter(DataLoader(range(100), sampler=sampler, batch_size=4))).tolist() == [20, 21, 22, 23]
    assert len(sampler) == 4
