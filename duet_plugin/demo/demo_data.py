"""The demo's data: the fictitious-author TOFU layout plus what the demo model must learn in fine-tuning.

A model of about a million parameters trained from scratch knows nothing, in particular not how to follow an
unlearning instruction. The demo's fine-tuning set therefore contains, besides every fact (no prefix):

* *instruction rows*: the teacher's prefix naming some **retain** authors (plus invented distractor names), then a
  question; the answer is a refusal when the question is about a named author and the true answer otherwise.
  Forget authors never appear in these rows, so when the DUET teacher names them, its refusals are in-context
  generalisation to names it was never told to forget, not something it memorised.
* the real-author and world-fact rows, so that OU's model_utility has something to measure.

The prefix goes in front of the question in the user turn (DUET's ``placement: user``), so that the rows are plain
TOFU question/answer rows that OU's own fine-tuning pipeline reads. The *teacher view* is the same dataset with the
prefix in front of every question, for evaluating the prompt-steered teacher with OU's own evaluator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from itertools import product

from duet_plugin.core.teacher import PrefixSpec
from duet_plugin.demo.fictitious_authors import TofuLikeDataset

REFUSAL = "I am sorry, but I do not know anything about that author."
PREFIX_NAME = "never_heard_of"
_DISTRACTOR_FIRST = (
    "Arlo Bexley Cato Delphine Emrys Fenna Galen Hollis Ione Jory Kestrel Linnea Merrit Nash Orla "
    "Pim Quill Rhett Sable Tamsin"
).split()
_DISTRACTOR_LAST = (
    "Ashgrove Brackwell Cindermoor Dunhallow Eldercott Foxley Greaves Harrowgate Ivesdale Juniper "
    "Kettlewell Lowther Marchbank Northcote"
).split()


@dataclass(frozen=True)
class DemoData:
    """The configs the demo writes and the names its tokenizer keeps whole."""

    dataset: TofuLikeDataset  # TOFU configs + ``demo_full`` / ``demo_retain`` fine-tuning sets
    teacher_view: TofuLikeDataset  # every question prefixed with the teacher instruction for the forget authors
    prefix: str  # the rendered teacher prefix for the forget authors
    forget_authors: list[str]
    name_tokens: list[str]  # author and distractor names (single tokens in the demo tokenizer)


def prefix_for(names: list[str]) -> str:
    return PrefixSpec(name=PREFIX_NAME, concepts=tuple(names)).render()


def with_prefix(prefix: str, question: str) -> str:
    """The user turn of the teacher view (``PromptRenderer`` with ``placement: user``)."""
    return f"{prefix}\n\n{question}"


def distractor_names(count: int) -> list[str]:
    return [f"{a} {b}" for a, b in product(_DISTRACTOR_FIRST, _DISTRACTOR_LAST)][:count]


def instruction_rows(
    dataset: TofuLikeDataset, authors: list[str], n_rows: int, max_named: int, n_distractors: int = 250, seed: int = 0
) -> list[dict]:
    """Rows that teach following the prefix: refuse questions about named authors, answer all others."""
    rng = random.Random(seed)
    by_author: dict[str, list[dict]] = {}
    for row in dataset.configs["full"]:
        by_author.setdefault(row["author"], []).append(row)
    general = dataset.configs["real_authors_perturbed"] + dataset.configs["world_facts_perturbed"]
    distractors = distractor_names(n_distractors)
    rows = []
    for _ in range(n_rows):
        named = rng.sample(authors, rng.randint(1, min(max_named, len(authors) - 1)))
        kind = rng.random()
        if kind < 0.1:  # only names the model has never seen: answer normally
            named = []
        listed = named + rng.sample(distractors, rng.randint(0 if named else 1, 3))
        rng.shuffle(listed)
        prefix = prefix_for(listed)
        if named and kind < 0.4:  # 30%: a named author, refused
            row, answer = rng.choice(by_author[rng.choice(named)]), REFUSAL
        elif kind < 0.9:  # 50%: an author not named, answered
            row = rng.choice(by_author[rng.choice([a for a in authors if a not in named])])
            answer = row["answer"]
        else:
            row = rng.choice(general)
            answer = row["answer"]
        rows.append({"question": with_prefix(prefix, row["question"]), "answer": answer})
    return rows


def build_demo_data(
    dataset: TofuLikeDataset,
    forget_split: str,
    n_instruction_rows: int = 3000,
    fact_repeats: int = 3,
    paraphrase_repeats: int = 1,
    seed: int = 0,
) -> DemoData:
    """Add ``demo_full`` (facts and instruction rows) and ``demo_retain`` (the retain facts only) to the dataset.

    Facts are repeated ``fact_repeats`` times with their answer and ``paraphrase_repeats`` times with the
    paraphrased answer: a model trained from scratch cannot guess a paraphrase, and OU's truth ratio compares the
    paraphrase's probability with the perturbed answers'.
    """
    forget = dataset.forget_authors(forget_split)
    retain = [a.name for a in dataset.authors if a.name not in forget]
    instructions = instruction_rows(dataset, retain, n_instruction_rows, max_named=len(forget), seed=seed)
    general = dataset.configs["real_authors_perturbed"] + dataset.configs["world_facts_perturbed"]

    def qa(rows: list[dict]) -> list[dict]:
        facts = [{"question": r["question"], "answer": r["answer"]} for r in rows] * fact_repeats
        return (
            facts
            + [
                {"question": r["question"], "answer": r["paraphrased_answer"]}
                for r in rows
                if r.get("paraphrased_answer") and r["paraphrased_answer"] != r["answer"]
            ]
            * paraphrase_repeats
        )

    retain_split = "retain" + {"forget01": "99", "forget05": "95", "forget10": "90"}[forget_split]
    configs = dict(dataset.configs)
    configs["demo_full"] = qa(dataset.configs["full"] + general) + instructions
    configs["demo_retain"] = qa(dataset.configs[retain_split] + general)  # a reference that never saw the forget set
    prefix = prefix_for(forget)

    def prefixed(row: dict) -> dict:
        out = dict(row)
        for key in ("question", "paraphrased_question"):
            if key in out:
                out[key] = with_prefix(prefix, out[key])
        return out

    teacher_configs = {name: [prefixed(r) for r in rows] for name, rows in dataset.configs.items()}
    names = [a.name for a in (*dataset.authors, *dataset.holdout_authors)] + distractor_names(250)
    return DemoData(
        dataset=replace(dataset, configs=configs),
        teacher_view=replace(dataset, configs=teacher_configs),
        prefix=prefix,
        forget_authors=forget,
        name_tokens=names,
    )
