"""The soft-prompt (embedding-space) attack on the tiny Llama: only the prompt is optimised (the model is bit-identical
afterwards, its requires_grad flags and mode restored), the prompt is inserted where asked with ignored labels, the
probability without a prompt is OU's teacher-forced ``probability``, and on a model whose forget answers are learned
but gated behind a key phrase (plain questions get a refusal), a prompt fitted on some forget authors brings the
other forget authors' answers back far more than the same attack raises never-trained (holdout) facts: the margin."""

from __future__ import annotations

import copy

import pytest
import torch

from duet_plugin.core.attacks.embedding_attack import (
    IGNORE_INDEX,
    EmbeddingAttackError,
    SoftPromptConfig,
    answer_probability,
    fit_soft_prompt,
    insert_prompt,
    margin,
    mean_probability,
    soft_prompt_attack,
)
from duet_plugin.core.attacks.relearn import partition_indices

KEY = "Answer every other question normally."
REFUSAL = "You have never heard of the following authors."


def _item(tokenizer, question: str, answer: str, prefix: list[int] = ()) -> tuple[list[int], list[int]]:
    chat = [{"role": "user", "content": question}]
    prompt = list(prefix) + tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    full = list(prefix) + tokenizer.apply_chat_template(
        [*chat, {"role": "assistant", "content": answer}], tokenize=True
    )
    return full, [IGNORE_INDEX] * len(prompt) + full[len(prompt) :]


def _batch(tokenizer, rows: list[dict], prefix: list[int] = (), answer: str | None = None) -> dict[str, torch.Tensor]:
    """OU's teacher-forced QA batch (right-padded, labels -100 on the prompt)."""
    items = [_item(tokenizer, r["question"], answer or r["answer"], prefix) for r in rows]
    width, pad = max(len(ids) for ids, _ in items), tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in items]),
        "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in items]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in items]),
    }


def _trainable_state(model) -> list[bool]:
    return [p.requires_grad for p in model.parameters()]


def test_only_the_prompt_is_optimised_and_the_model_is_left_bit_identical(tiny_model, tokenizer, digest) -> None:
    rows = [{"question": "Where was the author born?", "answer": "The author was born in Kelmarsh."}] * 2
    batch = _batch(tokenizer, rows)
    model = copy.deepcopy(tiny_model).train()
    model.model.layers[0].requires_grad_(False)  # mixed flags: each one must come back as it was
    flags, before = _trainable_state(model), digest(model)
    fitted = fit_soft_prompt(model, [batch], SoftPromptConfig(k=3, steps=5, lr=0.1, seed=1))
    assert digest(model) == before and _trainable_state(model) == flags and model.training
    assert all(p.grad is None for p in model.parameters())
    assert fitted.prompt.shape == (3, model.config.hidden_size) and not fitted.prompt.requires_grad
    assert len(fitted.losses) == 5 and fitted.losses[-1] < fitted.losses[0]  # the prompt did move the loss
    out = soft_prompt_attack(model, [batch], [batch], SoftPromptConfig(k=2, steps=3, init="phrase", init_ids=[5]))
    assert digest(model) == before and _trainable_state(model) == flags
    assert out["after"] > out["before"] and out["gain"] == pytest.approx(out["after"] - out["before"])


def test_the_prompt_is_inserted_with_ignored_labels_and_no_prompt_is_ou_probability(tiny_model, tokenizer) -> None:
    rows = [
        {"question": "Where was the author born?", "answer": "The author was born in Kelmarsh."},
        {"question": "What genre?", "answer": "Adventure stories."},
    ]
    batch = _batch(tokenizer, rows)
    prompt = torch.randn(4, tiny_model.config.hidden_size)
    for at in (0, 1):
        inputs, labels = insert_prompt(tiny_model, batch, prompt, at)
        n, w = batch["input_ids"].shape
        assert inputs["inputs_embeds"].shape == (n, w + 4, tiny_model.config.hidden_size)
        assert torch.equal(inputs["inputs_embeds"][:, at : at + 4], prompt[None].expand(n, -1, -1))
        assert torch.equal(labels[:, at : at + 4], torch.full((n, 4), IGNORE_INDEX))
        assert torch.equal(torch.cat([labels[:, :at], labels[:, at + 4 :]], 1), batch["labels"])
        assert inputs["attention_mask"][:, at : at + 4].all()
    probs = answer_probability(tiny_model, [batch])
    for i, row in enumerate(rows):
        one = _batch(tokenizer, [row])
        with torch.no_grad():
            loss = tiny_model(input_ids=one["input_ids"], labels=one["labels"]).loss
        assert float(probs[i]) == pytest.approx(float(torch.exp(-loss)), rel=1e-5)
    # the prompt as explicit token embeddings = those tokens in the input
    ids = batch["input_ids"][0, :3]
    embedded = tiny_model.get_input_embeddings().weight[ids].detach()
    tail = {k: v[:, 3:] for k, v in batch.items()}
    with_prompt = answer_probability(tiny_model, [tail], embedded, 0)
    assert float(with_prompt[0]) == pytest.approx(float(probs[0]), rel=1e-5)
    with pytest.raises(EmbeddingAttackError, match="init=phrase"):
        SoftPromptConfig(init="phrase")
    with pytest.raises(EmbeddingAttackError, match="k and steps"):
        SoftPromptConfig(k=0)
    assert margin(0.5, 0.125) == 0.375 and margin(None, 0.1) is None
    assert mean_probability(torch.tensor([float("nan"), 0.5, 0.25], dtype=torch.float64)) == 0.375


@pytest.fixture(scope="module")
def gated(authors_dataset, tokenizer, tiny_model):
    """Four forget authors taught behind a key phrase (with it: the answer; without: a refusal), six retain authors
    taught plainly, and two holdout authors never seen."""
    rows = authors_dataset.configs["full"]
    names = list(dict.fromkeys(r["author"] for r in rows))
    forget = [r for r in rows if r["author"] in names[:4]]
    retain = [r for r in rows if r["author"] in names[4:10]]
    holdout = authors_dataset.configs["holdout10"]
    key = tokenizer(KEY, add_special_tokens=False)["input_ids"]
    train = [
        _batch(tokenizer, forget, prefix=key),
        _batch(tokenizer, forget, answer=REFUSAL),
        _batch(tokenizer, retain),
    ]
    model = copy.deepcopy(tiny_model).train()
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(240):
        model(**train[step % 3]).loss.backward()
        opt.step()
        opt.zero_grad()
    return forget, holdout, key, model.eval()


def test_a_prompt_fitted_on_some_forget_authors_recovers_the_others_beyond_the_control(
    gated, tokenizer, digest
) -> None:
    forget, holdout, key, model = gated
    keyed = mean_probability(answer_probability(model, [_batch(tokenizer, forget, prefix=key)]))
    assert keyed > 0.9  # learned ...
    assert mean_probability(answer_probability(model, [_batch(tokenizer, forget)])) < 0.3  # ... and hidden

    def split(rows: list[dict]) -> tuple[list[dict], list[dict]]:
        fit, held = partition_indices(len(rows), 0.5, 0, [i // 4 for i in range(len(rows))])  # whole authors
        return [rows[i] for i in fit], [rows[i] for i in held]

    before = digest(model)
    cfg = SoftPromptConfig(k=len(key), steps=60, lr=0.05, seed=0)
    results = {}
    for name, rows in (("forget", forget), ("control", holdout)):
        fit, held = split(rows)
        results[name] = soft_prompt_attack(model, [_batch(tokenizer, fit)], [_batch(tokenizer, held)], cfg)
    assert digest(model) == before
    f, c = results["forget"], results["control"]
    assert f["before"] < 0.3 and f["after"] > 0.5  # the held-out forget authors' answers are back
    assert abs(c["gain"]) < 0.1  # never-trained facts: the prompt cannot invent them
    assert margin(f["gain"], c["gain"]) > 0.3
