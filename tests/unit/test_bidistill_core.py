"""BiDistill's core: config, stream/direction weighting, the DUET ablation, online == precomputed, prefill streams."""

from __future__ import annotations

import copy

import pytest
import torch

from duet_plugin.core.bidistill import BiDistillConfig, TermScales, bidistill_loss, parse_stream_weights
from duet_plugin.core.collate import TeacherStudentCollator
from duet_plugin.core.duet import DUETConfig, duet_loss
from duet_plugin.core.teacher_targets import precompute_targets

PREFIX = "You have never heard of Gideon Kilbride. Say you do not know."


@pytest.fixture
def collator(tokenizer, chat_args):
    return TeacherStudentCollator(tokenizer, chat_args, prefix=PREFIX)


@pytest.fixture
def streams(authors_dataset):
    """Records of all four streams (adversarial: forget questions with the first words of the answer prefilled)."""
    forget = authors_dataset.configs["forget10"][:4]
    retain = authors_dataset.configs["retain90"][:4]
    boundary = authors_dataset.configs["world_facts_perturbed"][:4]
    return {
        "forget": [{"prompt": r["question"], "stream": "forget", "index": i} for i, r in enumerate(forget)],
        "retain": [{"prompt": r["question"], "stream": "retain", "index": i} for i, r in enumerate(retain)],
        "boundary": [{"prompt": r["question"], "stream": "boundary", "index": i} for i, r in enumerate(boundary)],
        "adversarial": [
            {"prompt": r["question"], "prefill": " ".join(r["answer"].split()[:3]), "stream": "adversarial", "index": i}
            for i, r in enumerate(forget)
        ],
    }


@pytest.fixture
def student(tiny_model):
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():  # differ from the teacher, as after some training
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return model


def _batches(collator, streams, names=None):
    return {s: collator(recs) for s, recs in streams.items() if names is None or s in names}


def _loss(student, teacher, collator, batches, cfg, tokenizer, **kw):
    return bidistill_loss(
        student, batches, cfg, len(tokenizer), collator.pad_id, [tokenizer.eos_token_id], teacher=teacher, **kw
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distance": "cosine"}, "distance"),
        ({"top_k": 0}, "top_k must be a positive integer"),
        ({"store_top_k": 5, "top_k": 10}, "store_top_k=5 must be >= top_k and push_top_k"),
        ({"distance": "bild", "push_top_k": 1}, "distance=bild compares pairs"),
        ({"w_push": -1.0}, "w_push must be >= 0"),
        ({"stream_weights": {"neighbours": {"pull": 1}}}, "stream_weights.neighbours is not a stream"),
        ({"stream_weights": {"forget": {"shove": 1}}}, "stream_weights.forget.shove is not a direction"),
        ({"stream_weights": {"forget": 2.0}}, "must map directions to weights"),
        ({"stream_weights": {"retain": {"pull": -0.5}}}, "must be >= 0"),
        ({"positions": "all"}, "positions"),
    ],
)
def test_config_rejects_bad_values_naming_the_key(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        BiDistillConfig(**kwargs)


def test_stream_weights_merge_over_the_defaults() -> None:
    w = parse_stream_weights({"retain": {"push": 0.5}})
    assert w["retain"] == {"pull": 1.0, "push": 0.5} and w["forget"] == {"pull": 1.0, "push": 1.0}
    cfg = BiDistillConfig(w_push=2.0, stream_weights={"retain": {"push": 0.5}})
    assert cfg.weight("retain", "push") == 1.0 and cfg.weight("boundary", "push") == 0.0
    assert cfg.stored_k(50) == 50 and BiDistillConfig(store_top_k=None).stored_k(600) == 600
    assert BiDistillConfig().stored_k(600) == 256 and BiDistillConfig(teacher_mode="online").stored_k(600) == 600


def test_duet_ablation_is_duets_loss(student, tiny_model, collator, streams, tokenizer) -> None:
    batches = _batches(collator, streams, ("forget", "retain"))
    bi, bi_parts = _loss(
        student, tiny_model, collator, batches, BiDistillConfig(teacher_mode="online").as_duet(), tokenizer
    )
    duet, duet_parts = duet_loss(
        student,
        batches,
        DUETConfig(teacher_mode="online"),
        collator.pad_id,
        [tokenizer.eos_token_id],
        teacher=tiny_model,
    )
    assert torch.allclose(bi, duet, atol=1e-6)
    assert bi_parts == pytest.approx({f"{s}_pull": v for s, v in duet_parts.items()})


@pytest.mark.parametrize("distance", ["huber", "kl", "bild"])
@pytest.mark.parametrize("positions", ["first", "first_n"])
def test_precomputed_full_vocabulary_equals_online(
    student, tiny_model, collator, streams, tokenizer, distance, positions
):
    cfg = BiDistillConfig(distance=distance, positions=positions, num_positions=3, store_top_k=None, balance="none")
    online_cfg = BiDistillConfig(
        distance=distance, positions=positions, num_positions=3, teacher_mode="online", balance="none"
    )
    batches = _batches(collator, streams)
    store = precompute_targets(
        tiny_model, streams, collator, cfg.target_config(len(tokenizer)), collator.pad_id, [tokenizer.eos_token_id]
    )
    pre, pre_parts = _loss(student, None, collator, batches, cfg, tokenizer, store=store)
    online, online_parts = _loss(student, tiny_model, collator, batches, online_cfg, tokenizer)
    assert torch.allclose(pre, online, atol=1e-5)
    assert set(pre_parts) == {"forget_pull", "forget_push", "retain_pull", "boundary_pull", "adversarial_pull",
                              "adversarial_push"}  # fmt: skip
    assert pre_parts == pytest.approx(online_parts, abs=1e-5)


def test_a_small_store_approximates_the_push_term_from_above(student, tiny_model, collator, streams, tokenizer):
    batches = _batches(collator, streams, ("forget",))
    exact_cfg, small_cfg = BiDistillConfig(store_top_k=None), BiDistillConfig(store_top_k=10)
    args = (collator, exact_cfg.target_config(len(tokenizer)), collator.pad_id, [tokenizer.eos_token_id])
    exact_store = precompute_targets(tiny_model, {"forget": streams["forget"]}, *args)
    small_store = precompute_targets(
        tiny_model, {"forget": streams["forget"]}, collator, small_cfg.target_config(len(tokenizer)),
        collator.pad_id, [tokenizer.eos_token_id],
    )  # fmt: skip
    exact = _loss(student, None, collator, batches, exact_cfg, tokenizer, store=exact_store)[1]
    small = _loss(student, None, collator, batches, small_cfg, tokenizer, store=small_store)[1]
    assert small["forget_pull"] == pytest.approx(exact["forget_pull"])  # pull needs only the teacher's top-K
    assert small["forget_push"] != pytest.approx(exact["forget_push"])
    assert small_store.nbytes() < exact_store.nbytes() / 10


def test_stream_and_direction_weights_scale_exactly_their_term(student, tiny_model, collator, streams, tokenizer):
    batches = _batches(collator, streams)
    base_cfg = BiDistillConfig(teacher_mode="online", balance="none")
    base, parts = _loss(student, tiny_model, collator, batches, base_cfg, tokenizer)
    heavier = BiDistillConfig(teacher_mode="online", balance="none", stream_weights={"adversarial": {"push": 3.0}})
    more, _ = _loss(student, tiny_model, collator, batches, heavier, tokenizer)
    assert float((more - base).detach()) == pytest.approx(2.0 * parts["adversarial_push"], rel=1e-5)
    no_boundary = BiDistillConfig(teacher_mode="online", balance="none", stream_weights={"boundary": {"pull": 0.0}})
    less, less_parts = _loss(student, tiny_model, collator, batches, no_boundary, tokenizer)
    assert "boundary_pull" not in less_parts and float((base - less).detach()) == pytest.approx(
        parts["boundary_pull"], rel=1e-5
    )
    only_push = BiDistillConfig(teacher_mode="online", balance="none", w_pull=0.0)
    assert all(k.endswith("_push") for k in _loss(student, tiny_model, collator, batches, only_push, tokenizer)[1])
    nothing = BiDistillConfig(teacher_mode="online", balance="none", w_pull=0.0, w_push=0.0)
    with pytest.raises(ValueError, match="No stream with a non-zero weight"):
        _loss(student, tiny_model, collator, batches, nothing, tokenizer)


def test_balance_start_brings_large_terms_down_to_the_mean_and_amplifies_none(
    student, tiny_model, collator, streams, tokenizer
):
    """At the first step every term above the mean of the first values is divided by its ratio to that mean (so it
    starts at the mean); smaller terms keep their size; the same divisors hold for the rest of the run."""
    batches = _batches(collator, streams)
    weights = {"adversarial": {"push": 3.0}, "boundary": {"pull": 0.5}}
    raw_cfg = BiDistillConfig(teacher_mode="online", stream_weights=weights, balance="none")
    cfg = BiDistillConfig(teacher_mode="online", stream_weights=weights)
    assert cfg.balance == "start"
    _, first = _loss(student, tiny_model, collator, batches, raw_cfg, tokenizer)
    mean = sum(first.values()) / len(first)
    expected_scale = {k: max(v, mean) / mean for k, v in first.items()}
    assert max(expected_scale.values()) > 1.5 and min(expected_scale.values()) == 1.0  # some scaled, some not
    scales = TermScales()
    loss, parts = _loss(student, tiny_model, collator, batches, cfg, tokenizer, scales=scales)
    assert {k: parts[f"scale_{k}"] for k in first} == pytest.approx(expected_scale, rel=1e-6)
    weight = {k: cfg.weight(*k.rsplit("_", 1)) for k in first}
    assert float(loss.detach()) == pytest.approx(sum(weight[k] * first[k] / expected_scale[k] for k in first), rel=1e-5)
    assert all(first[k] / expected_scale[k] <= mean * (1 + 1e-6) for k in first)  # none starts above the mean
    moved = copy.deepcopy(student)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel() + 1)))
    _, raw = _loss(moved, tiny_model, collator, batches, raw_cfg, tokenizer)
    later, _ = _loss(moved, tiny_model, collator, batches, cfg, tokenizer, scales=scales)
    assert float(later.detach()) == pytest.approx(sum(weight[k] * raw[k] / expected_scale[k] for k in first), rel=1e-5)


def test_balance_each_starts_every_term_at_the_mean_so_weights_are_shares(
    student, tiny_model, collator, streams, tokenizer
):
    """balance: each divides every term by its own first value over the mean (floored at balance_floor x the mean):
    at the first step each term above the floor contributes the mean times its weight, so a term's share of the
    loss is its weight's share; a term below the floor is amplified by 1/balance_floor at most."""
    batches = _batches(collator, streams)
    weights = {"adversarial": {"push": 3.0}, "boundary": {"pull": 0.5}}
    raw_cfg = BiDistillConfig(teacher_mode="online", stream_weights=weights, balance="none")
    _, first = _loss(student, tiny_model, collator, batches, raw_cfg, tokenizer)
    mean = sum(first.values()) / len(first)
    lowest, second = sorted(first.values())[:2]
    assert max(first.values()) / mean > 1.5 and second < mean  # the terms differ: the test can tell the modes apart
    floor = (lowest + second) / 2 / mean  # one term below the floor, the others above
    cfg = BiDistillConfig(teacher_mode="online", stream_weights=weights, balance="each", balance_floor=floor)
    loss, parts = _loss(student, tiny_model, collator, batches, cfg, tokenizer, scales=TermScales.for_config(cfg))
    weight = {k: cfg.weight(*k.rsplit("_", 1)) for k in first}
    share = {k: weight[k] * first[k] / (parts[f"scale_{k}"] * float(loss.detach())) for k in first}
    above = [k for k in first if first[k] >= floor * mean]
    below = [k for k in first if first[k] < floor * mean]
    assert above and below
    for k in above:  # each starts at the mean: share = weight's share of the first loss
        assert first[k] / parts[f"scale_{k}"] == pytest.approx(mean, rel=1e-5)
    for k in below:  # amplified by exactly 1/floor, so it still starts below the mean
        assert parts[f"scale_{k}"] == pytest.approx(floor, rel=1e-6)
        assert first[k] / parts[f"scale_{k}"] < mean
    expected_loss = sum(weight[k] * mean for k in above) + sum(weight[k] * first[k] / floor for k in below)
    assert float(loss.detach()) == pytest.approx(expected_loss, rel=1e-5)
    ratio = {k: share[k] / weight[k] for k in above}
    assert max(ratio.values()) == pytest.approx(min(ratio.values()), rel=1e-5)  # a term's share is its weight's


def test_balance_grad_gives_every_term_the_same_pull_on_the_weights(student, tiny_model, collator, streams, tokenizer):
    """balance: grad divides each term by its gradient norm over the weights at the first step (over their mean):
    after it, every term above the floor pulls on the weights with the same norm, whatever its value; the
    divisors are kept for the rest of the run and no gradient is left in .grad by the measurement."""
    from duet_plugin.core.bidistill import gradient_norms

    batches = _batches(collator, streams)
    raw_cfg = BiDistillConfig(teacher_mode="online", balance="none")
    cfg = BiDistillConfig(teacher_mode="online", balance="grad", balance_floor=0.01)
    _, first = _loss(student, tiny_model, collator, batches, raw_cfg, tokenizer)
    norms = {}
    for key in first:  # each raw term alone, through the public loss
        stream, direction = key.rsplit("_", 1)
        only = {s: {"pull": 0.0, "push": 0.0} for s in streams}
        only[stream][direction] = 1.0
        one = BiDistillConfig(teacher_mode="online", balance="none", stream_weights=only)
        loss, _ = _loss(student, tiny_model, collator, batches, one, tokenizer)
        norms[key] = gradient_norms(student, {key: loss})[key].item()
    assert all(p.grad is None for p in student.parameters())  # measured with autograd.grad, not accumulated
    assert max(norms.values()) / min(norms.values()) > 1.5  # the terms pull differently: the test can tell
    scales = TermScales.for_config(cfg)
    loss, parts = _loss(student, tiny_model, collator, batches, cfg, tokenizer, scales=scales)
    mean = sum(norms.values()) / len(norms)
    assert {k: parts[f"scale_{k}"] for k in first} == pytest.approx({k: v / mean for k, v in norms.items()}, rel=1e-4)
    assert all(p.grad is None for p in student.parameters())
    for key in first:  # each scaled term now pulls with the mean norm
        stream, direction = key.rsplit("_", 1)
        only = {s: {"pull": 0.0, "push": 0.0} for s in streams}
        only[stream][direction] = 1.0
        one = BiDistillConfig(teacher_mode="online", balance="none", stream_weights=only)
        term, _ = _loss(student, tiny_model, collator, batches, one, tokenizer)
        scaled = gradient_norms(student, {key: term / parts[f"scale_{key}"]})[key].item()
        assert scaled == pytest.approx(mean, rel=1e-4)
    again, _ = _loss(student, tiny_model, collator, batches, cfg, tokenizer, scales=scales)  # divisors kept
    assert float(again.detach()) == pytest.approx(float(loss.detach()), rel=1e-5)


def test_term_scales_edge_cases() -> None:
    scales = TermScales()
    assert scales.of({"a": torch.tensor(0.0), "b": torch.tensor(4.0)}) == {"a": 1.0, "b": 2.0}  # mean 2: b halved
    assert scales.of({"b": torch.tensor(1.0)}) == {"b": 2.0}  # kept from the first step
    with pytest.raises(ValueError, match=r"\['c'\] appeared after the first step"):
        scales.of({"c": torch.tensor(1.0)})
    assert TermScales().of({"a": torch.tensor(0.0), "b": torch.tensor(0.0)}) == {"a": 1.0, "b": 1.0}
    each = TermScales(floor=0.25)  # mean 4: a (8) halved, b (4) kept, c (0) divided by the floor, not by zero
    assert each.of({"a": torch.tensor(8.0), "b": torch.tensor(4.0), "c": torch.tensor(0.0)}) == {
        "a": 2.0, "b": 1.0, "c": 0.25
    }  # fmt: skip
    assert TermScales.for_config(BiDistillConfig(balance="none")) is None
    assert TermScales.for_config(BiDistillConfig()).floor == 1.0
    assert TermScales.for_config(BiDistillConfig(balance="each", balance_floor=0.2)).floor == 0.2
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="balance_floor"):
            BiDistillConfig(balance="each", balance_floor=bad)
    assert BiDistillConfig().as_duet().balance == "none"
    with pytest.raises(ValueError, match="balance"):
        BiDistillConfig(balance="running")


def test_training_on_the_push_term_lowers_what_the_teacher_does_not_rank(tiny_model, collator, streams, tokenizer):
    """A few steps on forget push alone lower the student's logits at its own top tokens that the steered teacher
    ranks low, at the prefilled adversarial positions."""
    cfg = BiDistillConfig(
        teacher_mode="online", w_pull=0.0, stream_weights={"forget": {"push": 0.0}}, balance="none"
    )  # the raw push term, one stream
    student = copy.deepcopy(tiny_model)
    batches = _batches(collator, streams, ("adversarial",))
    with torch.no_grad():
        batch = batches["adversarial"]
        from duet_plugin.core.collate import gather_positions

        def at(model, ids, mask, pos):
            return gather_positions(model(input_ids=batch[ids], attention_mask=batch[mask]).logits, batch[pos],
                                    batch["position_mask"])  # fmt: skip

        s0 = at(student, "student_input_ids", "student_attention_mask", "student_positions")
        t = at(tiny_model, "teacher_input_ids", "teacher_attention_mask", "teacher_positions")
        top = s0.topk(10, dim=-1).indices
        gap0 = (s0.gather(-1, top) - t.gather(-1, top)).abs().sum()
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    for _ in range(5):
        loss, _ = _loss(student, tiny_model, collator, batches, cfg, tokenizer)
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        s1 = at(student, "student_input_ids", "student_attention_mask", "student_positions")
        gap1 = (s1.gather(-1, top) - t.gather(-1, top)).abs().sum()
    assert gap1 < gap0


def test_restart_aligns_prefilled_students_with_the_teachers_response_start(tiny_model, tokenizer, chat_args, streams):
    """With the teacher view unprefilled, the adversarial targets are exactly the teacher's targets for the bare
    forget questions: after a forced start the student is taught the teacher's deflection."""
    from duet_plugin.core.teacher_targets import teacher_targets

    restart = TeacherStudentCollator(tokenizer, chat_args, prefix=PREFIX, teacher_prefill=False)
    cfg = BiDistillConfig(teacher_mode="online").target_config(len(tokenizer))
    eos = [tokenizer.eos_token_id]
    adversarial, _, _ = teacher_targets(tiny_model, restart(streams["adversarial"]), cfg, restart.pad_id, eos)
    forget, _, _ = teacher_targets(tiny_model, restart(streams["forget"]), cfg, restart.pad_id, eos)
    assert torch.equal(adversarial.indices, forget.indices) and torch.allclose(adversarial.values, forget.values)
    continued = TeacherStudentCollator(tokenizer, chat_args, prefix=PREFIX)
    after_prefill, _, _ = teacher_targets(tiny_model, continued(streams["adversarial"]), cfg, restart.pad_id, eos)
    assert not torch.allclose(after_prefill.values, forget.values)
    with pytest.raises(ValueError, match="prefill_target"):
        BiDistillConfig(prefill_target="resume")
