"""Tests for the seeded TOFU-like fictitious-author dataset generator."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from duet_plugin.demo.fictitious_authors import (
    AUTHOR_CONFIGS,
    CONFIG_NAMES,
    FORGET_SPLITS,
    HOLDOUT_SPLITS,
    RETAIN_SPLITS,
    TEMPLATES,
    TofuLikeDataset,
    build_dataset,
    write_hub_layout,
)

# Every config name and field OU's TOFU configs (configs/data/datasets/TOFU_*.yaml, configs/eval/tofu*)
# read; question_key may be switched to paraphrased_question for the eval configs.
OU_FIELDS = {
    "question": str,
    "answer": str,
    "paraphrased_question": str,
    "paraphrased_answer": str,
    "perturbed_answer": list,
}
OU_CONFIG_NAMES = {
    "full",
    "forget01",
    "forget05",
    "forget10",
    "retain99",
    "retain95",
    "retain90",
    "holdout01",
    "holdout05",
    "holdout10",
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain_perturbed",
    "real_authors_perturbed",
    "world_facts_perturbed",
}


@pytest.fixture(scope="module")
def ds() -> TofuLikeDataset:
    return build_dataset()


def _authors_in(rows: list[dict]) -> set[str]:
    return {r["author"] for r in rows}


def test_same_seed_is_identical_and_other_seed_differs() -> None:
    a, b, c = build_dataset(seed=3), build_dataset(seed=3), build_dataset(seed=4)
    assert json.dumps(a.configs, sort_keys=True) == json.dumps(b.configs, sort_keys=True)
    assert a.authors == b.authors and a.holdout_authors == b.holdout_authors
    assert json.dumps(a.configs["full"]) != json.dumps(c.configs["full"])
    assert [x.name for x in a.authors] != [x.name for x in c.authors]


def test_all_ou_configs_present(ds: TofuLikeDataset) -> None:
    assert set(ds.configs) == OU_CONFIG_NAMES == set(CONFIG_NAMES)
    assert all(len(rows) > 0 for rows in ds.configs.values())


def test_sizes_at_defaults(ds: TofuLikeDataset) -> None:
    assert len(ds.authors) == 100 and len(ds.holdout_authors) == 10
    sizes = {k: len(v) for k, v in ds.configs.items()}
    assert sizes["full"] == 400
    for pct, n in (("01", 1), ("05", 5), ("10", 10)):
        assert sizes[f"forget{pct}"] == sizes[f"holdout{pct}"] == sizes[f"forget{pct}_perturbed"] == 4 * n
        assert sizes[f"retain{100 - int(pct)}"] == 400 - 4 * n
        assert len(ds.forget_authors(f"forget{pct}")) == n
    assert sizes["retain_perturbed"] == sizes["forget10"]
    assert sizes["real_authors_perturbed"] >= 20 and sizes["world_facts_perturbed"] >= 20


def test_every_row_has_ou_fields(ds: TofuLikeDataset) -> None:
    for name, rows in ds.configs.items():
        keys = set(rows[0])
        for row in rows:
            assert set(row) == keys, f"{name}: rows must share one schema"
            for key, typ in OU_FIELDS.items():
                assert isinstance(row[key], typ), (name, key)
                if typ is str:
                    assert row[key].strip(), (name, key)
            assert len(row["perturbed_answer"]) == 3
            assert all(isinstance(p, str) and p for p in row["perturbed_answer"])
            assert "index" not in row  # OU adds an "index" column itself


def test_perturbed_answers_are_distinct_and_wrong(ds: TofuLikeDataset) -> None:
    for name, rows in ds.configs.items():
        for row in rows:
            pert = row["perturbed_answer"]
            assert row["answer"] not in pert, name
            assert row["paraphrased_answer"] not in pert, name
            assert len(set(pert)) == len(pert), name


def test_answers_carry_the_fact_and_perturbed_do_not(ds: TofuLikeDataset) -> None:
    for name in AUTHOR_CONFIGS:
        for row in ds.configs[name]:
            author = ds.author(row["author"])
            value = str(getattr(author, row["attribute"]))
            assert value in row["answer"] and value in row["paraphrased_answer"], row
            assert row["answer"] != row["paraphrased_answer"]
            assert row["question"] != row["paraphrased_question"]
            assert author.name in row["question"] and author.name in row["paraphrased_question"]
            assert all(value not in p and author.name in p for p in row["perturbed_answer"]), row


def test_answers_are_one_short_sentence(ds: TofuLikeDataset) -> None:
    for row in ds.configs["full"]:
        for text in (row["answer"], row["paraphrased_answer"], *row["perturbed_answer"]):
            assert text.endswith(".") and text.count(". ") == 0 and len(text) < 200, text


def test_author_names_unique_and_not_nested(ds: TofuLikeDataset) -> None:
    big = build_dataset(n_authors=600, qa_per_author=1, seed=1)
    for d in (ds, big):
        names = [a.name for a in (*d.authors, *d.holdout_authors)]
        assert len(set(names)) == len(names)
        assert all(2 <= len(n.split()) <= 3 for n in names)
        assert not [(a, b) for a in names for b in names if a != b and a in b]
        books = [t for a in (*d.authors, *d.holdout_authors) for t in (a.debut_book, a.acclaimed_book)]
        assert len(set(books)) == len(books)


def test_forget_splits_nested_and_at_the_end(ds: TofuLikeDataset) -> None:
    trained = [a.name for a in ds.authors]
    f01, f05, f10 = (set(ds.forget_authors(s)) for s in FORGET_SPLITS)
    assert f01 < f05 < f10
    assert ds.forget_authors("forget10") == trained[-10:]
    assert ds.configs["forget10"] == ds.configs["full"][-40:]
    for s in FORGET_SPLITS:
        assert _authors_in(ds.configs[s]) == set(ds.forget_authors(s))
        assert ds.configs[f"{s}_perturbed"] == ds.configs[s]


def test_retain_is_full_minus_forget(ds: TofuLikeDataset) -> None:
    full = ds.configs["full"]
    for r, f in zip(RETAIN_SPLITS, FORGET_SPLITS, strict=True):
        forget = set(ds.forget_authors(f))
        retain = set(ds.retain_authors(r))
        assert not forget & retain
        assert forget | retain == {a.name for a in ds.authors}
        assert ds.configs[r] == [row for row in full if row["author"] not in forget]
        assert _authors_in(ds.configs[r]) == retain


def test_holdout_never_trained(ds: TofuLikeDataset) -> None:
    trained = _authors_in(ds.configs["full"])
    holdout = {a.name for a in ds.holdout_authors}
    assert not trained & holdout
    prev: set[str] = set()
    for h, f in zip(HOLDOUT_SPLITS, FORGET_SPLITS, strict=True):
        got = _authors_in(ds.configs[h])
        assert got <= holdout and got == set(ds.holdout_split_authors(h))
        assert len(got) == len(ds.forget_authors(f)) and prev <= got
        prev = got


def test_retain_perturbed_disjoint_from_forget(ds: TofuLikeDataset) -> None:
    got = _authors_in(ds.configs["retain_perturbed"])
    assert got <= set(ds.retain_authors("retain90"))
    assert not got & set(ds.forget_authors("forget10"))
    assert got == {a.name for a in ds.authors[: len(got)]}


def test_split_name_validation(ds: TofuLikeDataset) -> None:
    with pytest.raises(ValueError, match="forget01, forget05, forget10"):
        ds.forget_authors("forget20")
    with pytest.raises(ValueError, match="retain99"):
        ds.retain_authors("forget10")


@pytest.mark.parametrize("n_authors", [2, 7, 20, 33])
def test_small_and_odd_sizes(n_authors: int) -> None:
    d = build_dataset(n_authors=n_authors, qa_per_author=2, holdout_fraction=0.0, seed=5)
    assert len(d.configs["full"]) == 2 * n_authors
    for f, r, h in zip(FORGET_SPLITS, RETAIN_SPLITS, HOLDOUT_SPLITS, strict=True):
        nf = len(d.forget_authors(f))
        assert 1 <= nf < n_authors
        assert len(d.retain_authors(r)) == n_authors - nf
        assert len(d.configs[h]) == len(d.configs[f])  # holdout grows to match forget
    assert d.configs["retain_perturbed"]
    assert not _authors_in(d.configs["retain_perturbed"]) & set(d.forget_authors("forget10"))


def test_qa_per_author_uses_distinct_templates() -> None:
    assert len(TEMPLATES) >= 8
    d = build_dataset(n_authors=10, qa_per_author=len(TEMPLATES))
    per_author: dict[str, list[str]] = {}
    for row in d.configs["full"]:
        per_author.setdefault(row["author"], []).append(row["attribute"])
    assert all(sorted(v) == sorted(t.attribute for t in TEMPLATES) for v in per_author.values())
    assert len({r["question"] for r in d.configs["full"]}) == len(d.configs["full"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_authors": 1},
        {"qa_per_author": 0},
        {"qa_per_author": len(TEMPLATES) + 1},
        {"holdout_fraction": -0.1},
        {"n_authors": 5000},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        build_dataset(**kwargs)


def test_write_hub_layout_files_and_card(tmp_path: Path) -> None:
    d = build_dataset(n_authors=20, seed=2)
    out = write_hub_layout(d, tmp_path)
    assert out == tmp_path / "locuslab" / "TOFU"
    for name in CONFIG_NAMES:
        assert json.loads((out / f"{name}.json").read_text(encoding="utf-8")) == d.configs[name]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nconfigs:\n")
    for name in CONFIG_NAMES:
        assert f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {name}.json\n" in card


def test_write_hub_layout_refuses_to_overwrite(tmp_path: Path) -> None:
    d1, d2 = build_dataset(n_authors=10, seed=1), build_dataset(n_authors=10, seed=2)
    out = write_hub_layout(d1, tmp_path)
    (out / "keep.txt").write_text("mine")
    before = (out / "full.json").read_text(encoding="utf-8")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_hub_layout(d2, tmp_path)
    assert (out / "full.json").read_text(encoding="utf-8") == before
    write_hub_layout(d2, tmp_path, overwrite=True)
    assert json.loads((out / "full.json").read_text(encoding="utf-8")) == d2.configs["full"]
    assert (out / "keep.txt").read_text() == "mine"
    # an existing but empty directory is fine
    empty_root = tmp_path / "other"
    (empty_root / "locuslab" / "TOFU").mkdir(parents=True)
    assert write_hub_layout(d1, empty_root) == empty_root / "locuslab" / "TOFU"


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="`datasets` is not installed")
def test_load_dataset_reads_local_hub_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    d = build_dataset(n_authors=20, qa_per_author=2, seed=7)
    write_hub_layout(d, tmp_path / "root")
    monkeypatch.chdir(tmp_path / "root")
    for name in CONFIG_NAMES:
        loaded = datasets.load_dataset("locuslab/TOFU", name=name, split="train", cache_dir=str(tmp_path / "hf_cache"))
        assert len(loaded) == len(d.configs[name]), name
        assert loaded.to_list() == d.configs[name], name
        assert loaded.add_column("index", list(range(len(loaded))))[0]["index"] == 0  # as OU's loader does
