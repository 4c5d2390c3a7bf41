"""Sharing the teacher's work across processes: shards, the gathered target store, ZeRO-3 detection.

The two-process test runs real ``torch.distributed`` (gloo, CPU) in spawned processes, no OU needed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from duet_plugin.core.collate import TeacherStudentCollator
from duet_plugin.core.distributed import all_gather_objects, is_zero3_partitioned, shard_indices, world
from duet_plugin.core.duet import DUETConfig
from duet_plugin.core.ensemble import vocab_size
from duet_plugin.core.teacher_targets import TeacherTargetStore, precompute_targets

PREFIX = "You have never heard of Gideon Kilbride. Say you do not know."


@pytest.mark.parametrize(("n", "size"), [(10, 2), (11, 2), (7, 3), (1, 2), (2, 4), (9, 1)])
def test_shards_cover_everything_in_equal_parts(n: int, size: int) -> None:
    shards = [shard_indices(n, r, size) for r in range(size)]
    assert {len(s) for s in shards} == {-(-n // size)}  # equal: the same number of forwards on every rank
    assert set().union(*shards) == set(range(n))
    assert sum(len(s) for s in shards) - n < size  # at most one padded (repeated) query per rank
    assert all(len(set(s)) == len(s) for s in shards) or n < size  # no rank computes a query twice
    assert all(max(s) < n for s in shards)


def test_shard_arguments_are_checked() -> None:
    assert shard_indices(0, 0, 2) == []
    with pytest.raises(ValueError, match="rank 2"):
        shard_indices(4, 2, 2)


def test_one_process_is_the_identity() -> None:
    assert world() == (0, 1)
    assert all_gather_objects({"a": 1}) == [{"a": 1}]


def test_zero3_partitioned_parameters_are_recognised(tiny_model) -> None:
    assert not is_zero3_partitioned(tiny_model)
    assert not is_zero3_partitioned([tiny_model, torch.nn.Linear(2, 2)])
    partitioned = torch.nn.Linear(2, 3)
    partitioned.weight.ds_id = 0  # what deepspeed.zero.Init leaves on a parameter
    assert is_zero3_partitioned([tiny_model, partitioned])


def test_vocab_size_reads_the_full_shape_of_a_partitioned_embedding(tiny_model) -> None:
    full = vocab_size(tiny_model)

    class Partitioned(torch.nn.Module):  # a ZeRO-3 shard: an empty tensor plus the full shape in ds_shape
        def __init__(self) -> None:
            super().__init__()
            self.lm_head = torch.nn.Linear(1, 1)
            self.lm_head.weight = torch.nn.Parameter(torch.empty(0))
            self.lm_head.weight.ds_shape = torch.Size([full, 32])

        def get_output_embeddings(self) -> torch.nn.Module:
            return self.lm_head

    assert vocab_size(Partitioned()) == full


def _worker(rank: int, size: int, folder: str, positions: str) -> None:
    """One rank: precompute the targets of both streams, counting this rank's teacher forwards."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=size)
    try:
        root = Path(folder)
        model = AutoModelForCausalLM.from_pretrained(root / "model").eval()
        tokenizer = AutoTokenizer.from_pretrained(root / "model")
        streams, chat_args = pickle.loads((root / "inputs.pkl").read_bytes())
        collator = TeacherStudentCollator(tokenizer, chat_args, prefix=PREFIX)
        seen: list[int] = []
        model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
        cfg = DUETConfig(top_k=5, positions=positions, num_positions=3, teacher_batch_size=3)
        store = precompute_targets(
            model, streams, collator, cfg.target_config(), collator.pad_id, [tokenizer.eos_token_id]
        )
        (root / f"rank{rank}.pkl").write_bytes(pickle.dumps((store, len(seen), sum(seen))))
    finally:
        dist.destroy_process_group()


def _same_store(a: TeacherTargetStore, b: TeacherTargetStore) -> None:
    assert a.streams() == b.streams() and len(a) == len(b)
    for stream in a.streams():
        ids = sorted(a._rows[stream])
        assert ids == sorted(b._rows[stream])
        (ta, ca), (tb, cb) = a.lookup(stream, ids), b.lookup(stream, ids)
        assert ca == cb
        assert torch.equal(ta.indices, tb.indices)
        torch.testing.assert_close(ta.values, tb.values, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ta.logsumexp, tb.logsumexp, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["first", "first_n"])
def test_two_processes_split_the_precompute_and_both_get_every_target(
    tmp_path, tiny_model, tokenizer, authors_dataset, chat_args, positions
) -> None:
    rows = authors_dataset.configs["forget10"] + authors_dataset.configs["retain90"][:7]
    records = [{"prompt": r["question"], "index": i} for i, r in enumerate(rows)]
    streams = {"forget": records[:8], "retain": records[8:]}  # 8 and 7 queries: one shard is padded
    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "inputs.pkl").write_bytes(pickle.dumps((streams, chat_args)))

    collator = TeacherStudentCollator(tokenizer, chat_args, prefix=PREFIX)
    cfg = DUETConfig(top_k=5, positions=positions, num_positions=3, teacher_batch_size=3)
    seen: list[int] = []
    hook = tiny_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        single = precompute_targets(
            tiny_model, streams, collator, cfg.target_config(), collator.pad_id, [tokenizer.eos_token_id]
        )
    finally:
        hook.remove()

    mp.spawn(_worker, args=(2, str(tmp_path), positions), nprocs=2, join=True)
    results = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    for store, _, _ in results:
        _same_store(single, store)  # every rank holds every target, equal to one process's
    rows_per_rank = [rows for _, _, rows in results]
    if positions == "first":  # one teacher forward per batch: each rank ran its half (4 + 4 of the 15 queries),
        # plus, in every process, one forward of the shared prompt prefix's single row (core/logits.PrefixCache)
        assert seen[0] == 1 and sum(seen) == 15 + 1
        assert rows_per_rank == [8 + 1, 8 + 1]
        assert [calls for _, calls, _ in results] == [4 + 1, 4 + 1]  # ceil(4/3) + ceil(4/3) batches on both
    else:  # greedy continuations add forwards; each rank still runs them over its half only
        assert all(rows < sum(seen) for rows in rows_per_rank)
