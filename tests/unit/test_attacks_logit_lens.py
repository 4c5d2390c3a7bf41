"""The logit lens on the tiny Llama: its last layer is the model's own prediction, its other layers are the final norm
and LM head on the residual stream (checked against a plain full-tensor computation), the model is left untouched,
and tampering with the last block or the head changes exactly what it should."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from duet_plugin.core.attacks.logit_lens import (
    IGNORE_INDEX,
    STATS,
    LogitLensError,
    find_final_norm,
    logit_lens_batch,
    run_logit_lens,
)

QA = [
    ("Where was Gideon Kilbride born?", "He was born in Valdomir."),
    ("What did Gideon Kilbride write?", "Gideon Kilbride wrote The Salt Ledger."),
    ("Who taught Gideon Kilbride?", "Mira Toll taught him."),
]


def _item(tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    chat = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*chat, {"role": "assistant", "content": answer}], tokenize=True)
    return full, [IGNORE_INDEX] * len(prompt) + full[len(prompt) :]


def _collate(items: list[tuple[list[int], list[int]]], pad: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in items)
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in items])
    labels = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in items])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in items])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.fixture
def batch(tokenizer) -> dict[str, torch.Tensor]:
    """Three QA items (right-padded) and a fourth whose labels are all -100 (no answer to score)."""
    items = [_item(tokenizer, q, a) for q, a in QA]
    items.append((items[0][0], [IGNORE_INDEX] * len(items[0][0])))
    return _collate(items, tokenizer.pad_token_id)


def _first_answer_token_only(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same batch scoring only each item's first answer token: per-item values are then single-token values."""
    labels = torch.full_like(batch["labels"], IGNORE_INDEX)
    for b, row in enumerate(batch["labels"]):
        answer = (row != IGNORE_INDEX).nonzero().flatten()
        if answer.numel():
            labels[b, answer[0]] = row[answer[0]]
    return {**batch, "labels": labels}


def _reference(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-item means of the true token's probability, log-probability, rank and top-1 hit, from [B, L, V] logits."""
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    out = {s: torch.full((len(labels),), float("nan"), dtype=torch.float64) for s in STATS}
    for b in range(len(labels)):
        keep = targets[b] != IGNORE_INDEX
        if not keep.any():
            continue
        rows, t = logits[b][keep], targets[b][keep]
        log_prob = torch.log_softmax(rows, dim=-1).gather(1, t[:, None]).squeeze(1)
        rank = (rows > rows.gather(1, t[:, None])).sum(-1)
        top1 = rows.argmax(-1) == t
        for stat, v in (("prob", log_prob.exp()), ("log_prob", log_prob), ("rank", rank), ("top1", top1)):
            out[stat][b] = v.double().mean()
    return out


def _assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b.to(a.dtype), rtol=0, atol=atol, equal_nan=True)


def test_last_layer_is_the_models_own_prediction(tiny_model, batch, digest) -> None:
    before = digest(tiny_model)
    lens = logit_lens_batch(tiny_model, batch)
    assert digest(tiny_model) == before
    assert all(v.shape == (tiny_model.config.num_hidden_layers + 1, 4) for v in lens.values.values())
    with torch.no_grad():
        reference = _reference(tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               batch["labels"])  # fmt: skip
    for stat in STATS:
        _assert_close(lens.values[stat][-1], reference[stat])
    assert lens.final_logprob_gap < 1e-5
    assert lens.tokens.tolist()[3] == 0 and min(lens.tokens.tolist()[:3]) > 3
    assert torch.isnan(lens.values["prob"][:, 3]).all()  # the item without answer tokens


def test_every_layer_matches_a_full_tensor_logit_lens(tiny_model, batch) -> None:
    """Norm + head on the whole [B, L, H] hidden state of every layer (the pre-norm residual for the last one) gives
    the same values as the lens, which only reads the answer positions, here 3 tokens per head application."""
    captured = []
    handle = tiny_model.model.norm.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    with torch.no_grad():
        out = tiny_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
        handle.remove()
        hidden = [*out.hidden_states[:-1], captured[0]]
        full = [_reference(tiny_model.lm_head(tiny_model.model.norm(h)), batch["labels"]) for h in hidden]
    lens = logit_lens_batch(tiny_model, batch, chunk_size=3)
    assert torch.equal(hidden[-1], captured[0]) and not torch.allclose(hidden[-1], out.hidden_states[-1])
    for layer, reference in enumerate(full):
        for stat in STATS:
            _assert_close(lens.values[stat][layer], reference[stat])
    # the layers do differ, so the comparison above tells them apart
    assert not torch.allclose(lens.values["log_prob"][0, :3], lens.values["log_prob"][-1, :3])


def test_ranks_are_integers_and_top1_means_rank_zero(tiny_model, batch) -> None:
    single = _first_answer_token_only(batch)
    lens = logit_lens_batch(tiny_model, single)
    rank, top1 = lens.values["rank"][:, :3], lens.values["top1"][:, :3]
    assert torch.equal(rank, rank.round()) and (rank >= 0).all()
    assert torch.equal(top1, (rank == 0).double())
    assert (rank > 0).any()  # a random model: not everything is top-1
    # over whole answers, rank x tokens is a sum of integer ranks
    full = logit_lens_batch(tiny_model, batch)
    sums = full.values["rank"][:, :3] * full.tokens[:3].double()
    _assert_close(sums, sums.round(), atol=1e-6)
    assert (full.values["top1"][:, :3] >= 0).all() and (full.values["top1"][:, :3] <= 1).all()


def test_summary_best_and_final_layers(tiny_model, batch) -> None:
    run = run_logit_lens(tiny_model, [batch, batch], chunk_size=5)
    summary = run.summary()
    layers = tiny_model.config.num_hidden_layers + 1
    assert summary["num_layers"] == len(summary["value_by_layer"]) == layers
    assert summary["n_items"] == 6 and summary["skipped_items"] == 2
    assert summary["n_tokens"] == 2 * int(logit_lens_batch(tiny_model, batch).tokens.sum())
    probs = [v["prob"] for v in summary["value_by_layer"]]
    assert summary["best_layer"] == probs.index(max(probs)) and summary["best"]["prob"] == max(probs)
    assert summary["final"] == summary["value_by_layer"][-1]
    one = logit_lens_batch(tiny_model, batch)
    assert summary["value_by_layer"][1]["log_prob"] == pytest.approx(float(one.values["log_prob"][1, :3].mean()))
    assert run.indices == list(range(8))
    by_index = run.by_index()
    assert by_index[3] == {"prob": None, "log_prob": None, "rank": None, "tokens": 0}
    assert len(by_index[0]["prob"]) == layers and by_index[0]["tokens"] == by_index[4]["tokens"] > 0
    indexed = run_logit_lens(tiny_model, [{**batch, "index": torch.tensor([7, 8, 9, 10])}])
    assert indexed.indices == [7, 8, 9, 10]


def test_model_mode_and_gradients_are_left_alone(tiny_model, batch, digest) -> None:
    before = digest(tiny_model)
    tiny_model.train()
    try:
        lens = logit_lens_batch(tiny_model, batch)
        assert tiny_model.training
    finally:
        tiny_model.eval()
    assert not lens.values["prob"].requires_grad
    assert all(p.grad is None for p in tiny_model.parameters())
    assert digest(tiny_model) == before


def test_a_last_block_that_does_nothing_only_changes_the_final_layer(tiny_model, batch) -> None:
    """Zeroing the last block's output projections makes it the identity on the residual stream: the layers before it
    read the same, and the final layer now reads exactly what the layer before it read."""
    original = logit_lens_batch(tiny_model, batch)
    tampered = copy.deepcopy(tiny_model)
    with torch.no_grad():
        tampered.model.layers[-1].self_attn.o_proj.weight.zero_()
        tampered.model.layers[-1].mlp.down_proj.weight.zero_()
    lens = logit_lens_batch(tampered, batch)
    for stat in STATS:
        _assert_close(lens.values[stat][:-1], original.values[stat][:-1], atol=1e-6)
        _assert_close(lens.values[stat][-1], lens.values[stat][-2])
    assert not torch.allclose(lens.values["log_prob"][-1, :3], original.values["log_prob"][-1, :3], atol=1e-3)
    assert lens.final_logprob_gap < 1e-5


@pytest.fixture(scope="module")
def taught(tiny_model, tokenizer):
    """The tiny model taught the three answers (teacher-forced Adam steps), and its training batch."""
    batch = _collate([_item(tokenizer, q, a) for q, a in QA], tokenizer.pad_token_id)
    model = copy.deepcopy(tiny_model).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), batch


def test_an_answer_suppressed_by_the_last_block_is_still_read_from_the_layer_before(taught, tiny_model) -> None:
    """Suppressed vs removed. A taught model whose last block then pushes every position towards one other token:
    its final layer no longer gives the answers, the layer before still does, and agg_value (the best layer) reads
    them there. The untaught model, which never had the answers, reads low at every layer."""
    model, batch = taught
    original = run_logit_lens(model, [batch]).summary()
    assert original["final"]["prob"] > 0.9 and original["final"]["top1"] > 0.9  # taught
    assert original["value_by_layer"][1]["prob"] > 0.5  # already readable after the first of two blocks
    embeddings = model.get_output_embeddings().weight.detach()
    answers = set(batch["labels"][batch["labels"] != IGNORE_INDEX].tolist())
    other = next(t for t in range(len(embeddings)) if t not in answers and embeddings[t].norm() > 0)  # not pad
    push = 100.0 * embeddings[other] / embeddings[other].norm()
    handle = model.model.layers[-1].register_forward_hook(lambda m, args, out: (out[0] + push, *out[1:]))
    try:
        suppressed = run_logit_lens(model, [batch]).summary()
    finally:
        handle.remove()
    assert suppressed["value_by_layer"][:-1] == original["value_by_layer"][:-1]
    assert suppressed["final"]["prob"] < 0.01 and suppressed["final"]["rank"] > 10
    assert suppressed["best_layer"] == 1 and suppressed["best"] == original["value_by_layer"][1]
    assert suppressed["final_logprob_gap"] < 1e-4  # the hook acts before the final norm: the lens still is the model
    never = run_logit_lens(tiny_model, [batch]).summary()
    assert never["best"]["prob"] < 0.01 and never["best"]["top1"] == 0.0


def test_a_head_bias_for_one_token_moves_that_token_to_the_top_at_every_layer(tiny_model, batch) -> None:
    single = _first_answer_token_only(batch)
    firsts = [int(row[row != IGNORE_INDEX][0]) for row in single["labels"][:3]]
    favoured = firsts[0]
    assert firsts.count(favoured) < 3  # some items' first answer token is another one
    original = logit_lens_batch(tiny_model, single)
    biased = copy.deepcopy(tiny_model)
    bias = torch.zeros(biased.config.vocab_size)
    bias[favoured] = 50.0
    biased.lm_head.bias = torch.nn.Parameter(bias)
    lens = logit_lens_batch(biased, single)
    for item, token in enumerate(firsts):
        rank, old = lens.values["rank"][:, item], original.values["rank"][:, item]
        if token == favoured:
            assert (rank == 0).all() and (lens.values["prob"][:, item] > 0.99).all()
        else:  # one more token (the favoured one) may now rank above the true one; nothing else moves
            assert ((rank - old == 0) | (rank - old == 1)).all() and (rank >= 1).all()
            assert (lens.values["prob"][:, item] < 1e-10).all()
    assert lens.final_logprob_gap < 1e-5


def test_final_norm_is_found_on_other_architectures_and_named_when_it_is_not(tiny_model, batch) -> None:
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=3, n_head=2)).eval()
    assert find_final_norm(gpt2) is gpt2.transformer.ln_f
    ids = torch.randint(0, 64, (2, 10))
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    gpt_batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    lens = logit_lens_batch(gpt2, gpt_batch)
    assert lens.values["prob"].shape == (4, 2)
    with torch.no_grad():
        reference = _reference(gpt2(input_ids=ids).logits, labels)
    for stat in STATS:
        _assert_close(lens.values[stat][-1], reference[stat])

    assert find_final_norm(tiny_model) is tiny_model.model.norm
    assert find_final_norm(tiny_model, "model.norm") is tiny_model.model.norm
    with pytest.raises(LogitLensError, match=r"LlamaForCausalLM has no module 'model\.nrom'"):
        find_final_norm(tiny_model, "model.nrom")
    no_norm = copy.deepcopy(tiny_model)
    del no_norm.model.norm
    with pytest.raises(LogitLensError, match=r"cannot find the final norm of LlamaForCausalLM .*final_norm="):
        logit_lens_batch(no_norm, batch)


def test_bad_inputs_are_rejected(tiny_model, batch) -> None:
    with pytest.raises(LogitLensError, match="input_ids and labels"):
        logit_lens_batch(tiny_model, {"input_ids": batch["input_ids"]})
    with pytest.raises(LogitLensError, match="chunk_size must be >= 1"):
        logit_lens_batch(tiny_model, batch, chunk_size=0)
    empty = {**batch, "labels": torch.full_like(batch["labels"], IGNORE_INDEX)}
    with pytest.raises(LogitLensError, match="No item has answer tokens"):
        run_logit_lens(tiny_model, [empty]).summary()
    with pytest.raises(LogitLensError, match="no batch"):
        run_logit_lens(tiny_model, [])
    with pytest.raises(LogitLensError, match="ran 0 times"):  # a module that is not the one feeding the head
        logit_lens_batch(tiny_model, batch, final_norm=torch.nn.LayerNorm(tiny_model.config.hidden_size))
    shared = copy.deepcopy(tiny_model)
    shared.model.layers[1].input_layernorm = shared.model.layers[0].input_layernorm
    with pytest.raises(LogitLensError, match="ran 2 times"):
        logit_lens_batch(shared, batch, final_norm="model.layers.0.input_layernorm")
