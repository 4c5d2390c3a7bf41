"""Directional ablation on the tiny Llama: the direction is the normalised difference of the forget and retain
means, ablation removes exactly the component along it from every layer's residual stream and leaves no hook
behind, and on a taught model whose forget answers a planted direction suppresses, the direction estimated from a
fitting part of the forget set finds the plant and its ablation brings the held-out answers back (and does not
invent them on a model that never learned them)."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch

from duet_plugin.core.attacks.directional_ablation import (
    IGNORE_INDEX,
    DirectionalAblationError,
    answer_probability,
    choose_layer,
    collect_activations,
    difference_of_means,
    directional_ablation,
    find_layers,
    layer_table,
    project_out,
    prompt_mask,
    separation,
)


def _item(tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    chat = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*chat, {"role": "assistant", "content": answer}], tokenize=True)
    return full, [IGNORE_INDEX] * len(prompt) + full[len(prompt) :]


def _batch(tokenizer, rows: list[dict]) -> dict[str, torch.Tensor]:
    """OU's teacher-forced QA batch (right-padded, labels -100 on the prompt) with dataset indices."""
    items = [_item(tokenizer, r["question"], r["answer"]) for r in rows]
    width, pad = max(len(ids) for ids, _ in items), tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in items]),
        "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in items]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in items]),
        "index": torch.arange(len(rows)),
    }


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_the_direction_is_the_normalised_difference_of_means() -> None:
    g = torch.Generator().manual_seed(0)
    forget, retain = torch.randn(7, 3, 5, generator=g), torch.randn(4, 3, 5, generator=g)
    retain[:, 0] = forget[:, 0].mean(0)  # layer 0: the same mean on both sides, no direction
    forget[:, 2] += 3.0 * torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])
    dirs = difference_of_means(forget, retain)
    diff = forget.double().mean(0) - retain.double().mean(0)
    for layer in (1, 2):
        torch.testing.assert_close(dirs.directions[layer].double(), diff[layer] / diff[layer].norm())
        assert float(dirs.norms[layer]) == pytest.approx(float(diff[layer].norm()), rel=1e-6)
        scale = torch.cat([forget, retain])[:, layer].norm(dim=-1).mean()
        assert float(dirs.relative_norms[layer]) == pytest.approx(float(diff[layer].norm() / scale), rel=1e-5)
        # Cohen's d of the projections; the mean projections differ by exactly the norm
        pf, pr = forget[:, layer] @ dirs.directions[layer], retain[:, layer] @ dirs.directions[layer]
        pooled = math.sqrt((pf.var() * 6 + pr.var() * 3) / 9)
        assert float(pf.mean() - pr.mean()) == pytest.approx(float(dirs.norms[layer]), rel=1e-5)
        assert float(dirs.separations[layer]) == pytest.approx(float(dirs.norms[layer]) / pooled, rel=1e-4)
    assert not dirs.usable(0) and dirs.directions[0].abs().sum() == 0 and math.isnan(float(dirs.separations[0]))
    assert dirs.usable(2) and float(dirs.directions[2][1]) > 0.8  # the planted shift dominates layer 2
    table = layer_table(dirs)
    assert [row["layer"] for row in table] == [0, 1, 2] and table[0]["separation"] is None
    assert math.isnan(separation(forget[:1, 1], retain[:1, 1], dirs.directions[1]))  # two items: no spread
    with pytest.raises(DirectionalAblationError, match="must be"):
        difference_of_means(forget[:, :2], retain)


def test_ablation_removes_the_component_exactly_and_nothing_else() -> None:
    g = torch.Generator().manual_seed(1)
    x, d = torch.randn(2, 5, 16, generator=g), torch.randn(16, generator=g)
    d = d / d.norm()
    out = project_out(x, d)
    assert float((out @ d).abs().max()) < 1e-6
    torch.testing.assert_close(x - out, (x @ d)[..., None] * d)  # only the component along d went
    torch.testing.assert_close(project_out(out, d), out)  # idempotent
    other = torch.randn(16, generator=g)
    other = other - (other @ d) * d
    torch.testing.assert_close(out @ other, x @ other)  # orthogonal components untouched
    half = project_out(x.bfloat16(), d)
    assert half.dtype == torch.bfloat16 and float((half.float() @ d).abs().max()) < 0.05


def test_every_layer_is_clean_inside_and_the_model_is_unchanged_after(digest, tiny_model, tokenizer) -> None:
    rows = [{"question": "Where was Gideon Kilbride born?", "answer": "In Valdomir."}] * 2
    batch = _batch(tokenizer, rows)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    before, hooks = digest(tiny_model), _hooks(tiny_model)
    with torch.no_grad():
        logits = tiny_model(**inputs).logits
    d = torch.randn(tiny_model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    plain = collect_activations(tiny_model, [batch], "mean").values
    assert float((plain @ (d / d.norm())).abs().min()) > 1e-4  # a component to remove
    with directional_ablation(tiny_model, 3.0 * d):  # any scale: normalised
        assert _hooks(tiny_model) == hooks + len(find_layers(tiny_model)) + 1
        ablated = collect_activations(tiny_model, [batch], "mean").values
        with torch.no_grad():
            changed = tiny_model(**inputs).logits
    # the first block's input and every block's output: no component along d, at any prompt position
    assert ablated.shape[1] == tiny_model.config.num_hidden_layers + 1
    assert float((ablated @ (d / d.norm())).abs().max()) < 1e-5
    assert not torch.equal(changed, logits)
    assert _hooks(tiny_model) == hooks and digest(tiny_model) == before
    with torch.no_grad():
        assert torch.equal(tiny_model(**inputs).logits, logits)  # bit-identical afterwards
    with pytest.raises(RuntimeError, match="inside"), directional_ablation(tiny_model, d):
        raise RuntimeError("inside")
    assert _hooks(tiny_model) == hooks  # removed on an error too
    with pytest.raises(DirectionalAblationError, match="norm 0"), directional_ablation(tiny_model, 0 * d):
        pass


def test_activations_are_read_at_the_prompt_positions(tiny_model, tokenizer) -> None:
    rows = [
        {"question": "Where was Gideon Kilbride born?", "answer": "He was born in Valdomir."},
        {"question": "Who taught him?", "answer": "Mira Toll taught him."},
    ]
    batch = _batch(tokenizer, rows)
    labels, mask = batch["labels"], batch["attention_mask"]
    starts = [int((row != IGNORE_INDEX).nonzero()[0]) for row in labels]
    last = prompt_mask(labels, mask, "last")
    assert [int(row.argmax()) for row in last] == [s - 1 for s in starts] and torch.equal(last.sum(1), torch.ones(2))
    mean = prompt_mask(labels, mask, "mean")
    for b, s in enumerate(starts):
        torch.testing.assert_close(mean[b, :s], torch.full((s,), 1.0 / s))
        assert float(mean[b, s:].abs().sum()) == 0.0
    # left padding and an item without answer tokens: its attended positions are its prompt
    left = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    left_labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 6, 7], [IGNORE_INDEX] * 5])
    w = prompt_mask(left_labels, (left != 0).long(), "mean")
    torch.testing.assert_close(w, torch.tensor([[0, 0, 1.0, 0, 0], [0.2] * 5]))
    assert prompt_mask(left_labels, (left != 0).long(), "last").argmax(1).tolist() == [2, 4]
    with pytest.raises(DirectionalAblationError, match="position="):
        prompt_mask(labels, mask, "first")
    # layer 0 and the first block's output are HF's hidden_states[0] and [1] at those positions
    acts = collect_activations(tiny_model, [batch], "last")
    with torch.no_grad():
        hidden = tiny_model(input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True).hidden_states
    for b, s in enumerate(starts):
        for layer in (0, 1):
            torch.testing.assert_close(acts.values[b, layer], hidden[layer][b, s - 1], rtol=0, atol=1e-6)
    assert acts.indices == [0, 1]
    with pytest.raises(DirectionalAblationError, match="teacher-forced"):
        collect_activations(tiny_model, [{**batch, "labels": labels[:, :-1]}])


def test_answer_probability_is_exp_of_the_mean_answer_log_probability(tiny_model, tokenizer) -> None:
    rows = [{"question": "Who taught him?", "answer": "Mira Toll taught him."}, {"question": "Q?", "answer": "A."}]
    batch = _batch(tokenizer, rows)
    probs, indices = answer_probability(tiny_model, [batch])
    assert indices == [0, 1]
    for b, row in enumerate(rows):
        one = _batch(tokenizer, [row])
        with torch.no_grad():
            loss = tiny_model(input_ids=one["input_ids"], labels=one["labels"]).loss
        assert float(probs[b]) == pytest.approx(math.exp(-float(loss)), rel=1e-5)


# -- a planted forgetting direction ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def facts(authors_dataset, tokenizer):
    """Four forget authors (4 questions each: two fit the direction, two are scored), six retain authors, and the
    tokens only the forget prompts contain (the plant's trigger)."""
    rows = authors_dataset.configs["full"]
    names = list(dict.fromkeys(r["author"] for r in rows))
    fit, held, retain = ([r for r in rows if r["author"] in names[a:b]] for a, b in ((0, 2), (2, 4), (4, 10)))
    batches = {k: _batch(tokenizer, v) for k, v in (("fit", fit), ("held", held), ("retain", retain))}

    def prompt_tokens(batch: dict[str, torch.Tensor]) -> set[int]:
        return set(batch["input_ids"][(batch["labels"] == IGNORE_INDEX) & batch["attention_mask"].bool()].tolist())

    trigger = prompt_tokens(batches["fit"]) | prompt_tokens(batches["held"])
    trigger = torch.tensor(sorted(trigger - prompt_tokens(batches["retain"])))
    return batches, trigger


@pytest.fixture(scope="module")
def taught(facts, tiny_model):
    """A copy of the tiny model taught every answer (200 teacher-forced Adam steps)."""
    batches, _ = facts
    train = [_batch_without_index(batches["fit"]), _batch_without_index(batches["held"])]
    train.append(_batch_without_index(batches["retain"]))
    model = copy.deepcopy(tiny_model).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(200):
        model(**train[step % 3]).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def _batch_without_index(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "index"}


@contextlib.contextmanager
def planted(model, trigger: torch.Tensor, direction: torch.Tensor, scale: float = 30.0):
    """The 'unlearned' model: when a prompt holds a trigger token (a forget author's name), the first block adds
    ``scale * direction`` to the residual stream at every position."""
    hit: list[torch.Tensor] = []

    def detect(module, args, kwargs):
        hit[:] = [torch.isin(kwargs.get("input_ids", args[0] if args else None), trigger).any(1)]

    def push(module, args, output):
        hidden = output[0] + scale * direction * hit[0][:, None, None].to(output[0].dtype)
        return (hidden, *output[1:])

    handles = [model.register_forward_pre_hook(detect, with_kwargs=True)]
    handles.append(model.model.layers[0].register_forward_hook(push))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _mean_prob(model, batch) -> float:
    return float(answer_probability(model, [batch])[0].mean())


def test_ablating_a_planted_direction_brings_the_suppressed_answers_back(facts, taught, tiny_model) -> None:
    batches, trigger = facts
    fit, held, retain = batches["fit"], batches["held"], batches["retain"]
    plant = torch.randn(taught.config.hidden_size, generator=torch.Generator().manual_seed(1))
    plant = plant / plant.norm()
    taught_held, taught_retain = _mean_prob(taught, held), _mean_prob(taught, retain)
    assert taught_held > 0.9 and taught_retain > 0.9  # learned
    with planted(taught, trigger, plant):
        assert _mean_prob(taught, held) < 0.02 and _mean_prob(taught, fit) < 0.02  # suppressed ...
        assert _mean_prob(taught, retain) == pytest.approx(taught_retain)  # ... for the forget authors only
        dirs = difference_of_means(
            collect_activations(taught, [fit]).values, collect_activations(taught, [retain]).values
        )
        assert float(dirs.directions[1] @ plant) > 0.99 and float(dirs.separations[1]) > 10  # found the plant
        choice = choose_layer(taught, dirs, [fit])  # chosen on the fitting author, never the scored one
        assert set(choice.scores) == {1, 2} and choice.unablated < 0.02
        assert choice.scores[choice.layer] == max(choice.scores.values()) > 0.5
        with directional_ablation(taught, dirs.directions[choice.layer]):
            recovered, retain_after = _mean_prob(taught, held), _mean_prob(taught, retain)
    assert recovered > 0.6  # the held-out authors' answers are back
    assert retain_after > 0.9  # and the retain answers stay
    # a model that never learned the answers, with the same plant: ablation does not invent them
    with planted(tiny_model, trigger, plant):
        dirs = difference_of_means(
            collect_activations(tiny_model, [fit]).values, collect_activations(tiny_model, [retain]).values
        )
        with directional_ablation(tiny_model, dirs.directions[choose_layer(tiny_model, dirs, [fit]).layer]):
            never = _mean_prob(tiny_model, held)
    assert never < 0.05
    with pytest.raises(DirectionalAblationError, match="candidate layers"):
        choose_layer(taught, dirs, [fit], candidates=[5])
