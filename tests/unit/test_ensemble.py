"""Several teachers: config parsing, checkpoint checks, weighted logit averages, multi-view DUET targets."""

from __future__ import annotations

import copy

import pytest
import torch

from duet_plugin.core.collate import EXTRA_VIEWS, TeacherStudentCollator
from duet_plugin.core.duet import DUETConfig
from duet_plugin.core.ensemble import (
    TeacherEnsemble,
    TeacherSpec,
    average_logits,
    check_checkpoint,
    check_same_vocab,
    load_checkpoint,
    parse_teachers,
)
from duet_plugin.core.noise import shrink_and_perturb
from duet_plugin.core.options import OptionError
from duet_plugin.core.teacher_targets import ensemble_continuations, greedy_continuations, teacher_targets
from duet_plugin.demo.tiny_llama import build_tiny_llama

PREFIX_A = "You have never heard of Gideon Kilbride. Say you do not know."
PREFIX_B = "Refuse every question about the author Gideon Kilbride."


@pytest.fixture
def other_model(tiny_model):
    model = copy.deepcopy(tiny_model)
    shrink_and_perturb(model, alpha=0.5, beta=1.0, seed=3)
    return model.eval()


@pytest.fixture
def prompts(authors_dataset):
    rows = authors_dataset.configs["forget10"][:3] + authors_dataset.configs["retain90"][:2]
    return [{"prompt": r["question"], "index": i} for i, r in enumerate(rows)]


def test_parse_teachers_forms_and_errors() -> None:
    assert parse_teachers(None) == []
    assert parse_teachers("saves/a") == [TeacherSpec(path="saves/a")]
    specs = parse_teachers([{"path": "a", "weight": 2}, {"prefix": "never_heard_of"}])
    assert specs == [TeacherSpec("a", None, 2.0), TeacherSpec(None, "never_heard_of", 1.0)]
    with pytest.raises(OptionError, match=r"^teachers\[0\] has unknown key\(s\) \['wieght'\]"):
        parse_teachers([{"path": "a", "wieght": 2}])
    with pytest.raises(OptionError, match=r"^teachers has weights that sum to zero"):
        parse_teachers([{"path": "a", "weight": 0}])
    with pytest.raises(ValueError, match=r"\[1\].weight must be a non-negative"):
        parse_teachers(["a", {"path": "b", "weight": -1}])
    with pytest.raises(ValueError, match="checkpoint path or a mapping"):
        parse_teachers([3])


def test_checkpoint_checks_name_the_key(tmp_path, tiny_model) -> None:
    key = "trainer.method_args.teacher"
    with pytest.raises(FileNotFoundError, match=f"{key}=.*no such folder"):
        check_checkpoint(tmp_path / "missing", key)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        check_checkpoint(tmp_path / "empty", key)
    tiny_model.config.save_pretrained(tmp_path / "noweights")
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        check_checkpoint(tmp_path / "noweights", key)
    tiny_model.save_pretrained(tmp_path / "ok")
    loaded = load_checkpoint(tmp_path / "ok", key)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert all(
        torch.equal(a, b) for a, b in zip(tiny_model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_vocabulary_mismatch_is_refused(tiny_model, tokenizer) -> None:
    bigger = build_tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=4)
    bigger.resize_token_embeddings(len(tokenizer) + 8)
    with pytest.raises(ValueError, match=r"vocabulary .* differs"):
        check_same_vocab(tiny_model, bigger, "trainer.method_args.teacher")


def test_average_logits_is_the_weighted_mean() -> None:
    a, b = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    torch.testing.assert_close(average_logits([a, b], [1.0, 3.0]), 0.25 * a + 0.75 * b)
    assert average_logits([a], [5.0]) is a
    with pytest.raises(ValueError):
        average_logits([a, b], [1.0])


def test_ensemble_call_averages_members(tiny_model, other_model, tokenizer) -> None:
    ids = torch.tensor([tokenizer("Where was Gideon Kilbride born?")["input_ids"]])
    mask = torch.ones_like(ids)
    ens = TeacherEnsemble([(tiny_model, 0, 1.0), (other_model, 0, 2.0)])
    expected = (tiny_model(input_ids=ids).logits + 2 * other_model(input_ids=ids).logits) / 3
    torch.testing.assert_close(ens(input_ids=ids, attention_mask=mask).logits, expected)
    two_views = TeacherEnsemble([(tiny_model, 0, 1.0), (other_model, 1, 1.0)])
    with pytest.raises(ValueError, match="several prompt views"):
        two_views(input_ids=ids, attention_mask=mask)


def test_collator_extra_views_equal_a_collator_with_that_prefix(tokenizer, chat_args, prompts) -> None:
    multi = TeacherStudentCollator(tokenizer, chat_args, prefix=PREFIX_A, extra_prefixes=[PREFIX_B])
    only_b = TeacherStudentCollator(tokenizer, chat_args, prefix=PREFIX_B)
    batch, ref = multi(prompts), only_b(prompts)
    (view,) = batch[EXTRA_VIEWS]
    for key in ("teacher_input_ids", "teacher_attention_mask", "teacher_positions"):
        assert torch.equal(view[key], ref[key]), key
    assert torch.equal(batch["student_input_ids"], ref["student_input_ids"])
    assert not torch.equal(batch["teacher_input_ids"], ref["teacher_input_ids"])


@pytest.mark.parametrize("positions", ["first", "first_n"])
def test_multi_view_targets_average_each_prefixed_teacher(
    tiny_model, other_model, tokenizer, chat_args, prompts, positions
) -> None:
    """Two teachers (different weights, different prefixes): the targets are the top-K of the weighted mean of
    each teacher's logits on its own prefixed view, along the continuation decoded from that mean."""
    cfg = DUETConfig(top_k=6, positions=positions, num_positions=3)
    eos = [tokenizer.eos_token_id]
    multi = TeacherStudentCollator(tokenizer, chat_args, prefix=PREFIX_A, extra_prefixes=[PREFIX_B])
    ens = TeacherEnsemble([(tiny_model, 0, 1.0), (other_model, 1, 3.0)])
    targets, extended, conts = teacher_targets(ens, multi(prompts), cfg.target_config(), multi.pad_id, eos)

    a = TeacherStudentCollator(tokenizer, chat_args, prefix=PREFIX_A)
    b = TeacherStudentCollator(tokenizer, chat_args, prefix=PREFIX_B)
    # Brute force: each teacher on its own collated view extended by the same continuation, position by position.
    rows = []
    for i, rec in enumerate(prompts):
        ids_a = a.renderer.prompt_ids(rec["prompt"], PREFIX_A) + conts[i]
        ids_b = b.renderer.prompt_ids(rec["prompt"], PREFIX_B) + conts[i]
        la = tiny_model(input_ids=torch.tensor([ids_a])).logits[0]
        lb = other_model(input_ids=torch.tensor([ids_b])).logits[0]
        n = max(1, len(conts[i]))
        for j in range(n):
            pa = len(ids_a) - len(conts[i]) - 1 + j
            pb = len(ids_b) - len(conts[i]) - 1 + j
            rows.append(0.25 * la[pa] + 0.75 * lb[pb])
    expected = torch.stack(rows)
    torch.testing.assert_close(targets.values, expected.topk(6, dim=-1).values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(targets.logsumexp, expected.logsumexp(-1), atol=1e-5, rtol=1e-5)
    if positions == "first_n":
        # Greedy from the mean: each continuation token is the top-1 of the averaged logits before it.
        assert targets.indices[:, 0].tolist() == [t for c in conts for t in c]
        assert (
            extended[EXTRA_VIEWS][0]["teacher_input_ids"].shape[1]
            > multi(prompts)[EXTRA_VIEWS][0]["teacher_input_ids"].shape[1]
        )


def test_single_member_ensemble_decodes_like_generate(tiny_model, tokenizer, chat_args, prompts) -> None:
    collator = TeacherStudentCollator(tokenizer, chat_args, prefix=PREFIX_A)
    batch = collator(prompts)
    eos = [tokenizer.eos_token_id]
    ours = ensemble_continuations(TeacherEnsemble([(tiny_model, 0, 1.0)]), batch, 4, eos, collator.pad_id)
    hf = greedy_continuations(tiny_model, batch["teacher_input_ids"], batch["teacher_attention_mask"], 4, eos)
    assert ours == hf
