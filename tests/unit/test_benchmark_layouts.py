"""duet_plugin.demo.benchmark_layouts: local MUSE/WMDP layouts that datasets and lm-eval read (no OU needed)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import yaml

from duet_plugin.demo import benchmark_layouts as bl


def test_hub_dataset_is_read_by_load_dataset(authors_dataset, tmp_path: Path, monkeypatch) -> None:
    configs = bl.workspace_muse_configs(authors_dataset)
    folder = bl.write_hub_dataset(tmp_path, "muse-bench/MUSE-News", configs)
    monkeypatch.chdir(tmp_path)
    for config, splits in configs.items():
        for split, rows in splits.items():
            ds = datasets.load_dataset(
                "muse-bench/MUSE-News", name=config, split=split, cache_dir=str(tmp_path / "cache")
            )
            assert ds.to_list() == rows, (config, split)
    assert (folder / "README.md").read_text().startswith("---\nconfigs:\n- config_name: raw\n")


def test_write_files_leaves_unchanged_files_alone(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.txt"
    bl.write_files({path: "x"})
    stamp = path.stat().st_mtime_ns
    bl.write_files({path: "x"})
    assert path.stat().st_mtime_ns == stamp
    bl.write_files({path: "y"})
    assert path.read_text() == "y"


def test_verbmem_rows_stop_before_the_fact() -> None:
    (row,) = bl.verbmem_rows(["Ana Vel was born in Port Elsa. Port Elsa is her birthplace."])
    assert row == {"prompt": "Ana Vel was born in", "gt": "Port Elsa. Port Elsa is her birthplace."}
    assert bl.verbmem_rows(["one two three four"], prompt_words=3) == [{"prompt": "one two three", "gt": "four"}]


def test_mcq_rows_put_the_true_answer_at_the_index() -> None:
    rows = [{"question": f"q{i}", "answer": f"a{i}", "perturbed_answer": ["w1", "w2", "w3"]} for i in range(5)]
    mcq = bl.mcq_rows(rows)
    assert [m["answer"] for m in mcq] == [0, 1, 2, 3, 0]
    assert all(m["choices"][m["answer"]] == f"a{i}" and len(m["choices"]) == 4 for i, m in enumerate(mcq))


def test_mcq_task_is_an_lm_eval_multiple_choice_task(tmp_path: Path) -> None:
    files = bl.mcq_task_files(tmp_path, "demo_x", [{"question": "q", "choices": ["a", "b"], "answer": 1}], "a stand-in")
    config = yaml.safe_load(files[tmp_path / "demo_x.yaml"])
    assert config["task"] == "demo_x" and config["output_type"] == "multiple_choice"
    assert config["doc_to_choice"] == "{{choices}}" and config["doc_to_target"] == "answer"
    assert config["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "demo_x.jsonl")
    assert json.loads(files[tmp_path / "demo_x.jsonl"]) == {"question": "q", "choices": ["a", "b"], "answer": 1}


def test_wmdp_corpora_plain_or_json_lines(tmp_path: Path) -> None:
    plain = bl.wmdp_corpus_files(tmp_path, "bio", ["a  b\nc"], ["d"])
    assert plain[tmp_path / "data/wmdp/wmdp-corpora/bio-forget-corpus.jsonl"] == "a b c\n"  # one document a line
    lines = bl.wmdp_corpus_files(tmp_path, "cyber", ["x"], ["y"], json_lines=True)
    assert lines[tmp_path / "data/wmdp/wmdp-corpora/cyber-retain-corpus.jsonl"] == '{"text": "y"}\n'


def test_demo_layouts_split_facts_and_authors(authors_dataset) -> None:
    rows = authors_dataset.configs["forget10"]
    authors = {r["author"] for r in rows}
    assert len(bl.demo_documents(rows, "fact")) == len(rows)
    passages = bl.demo_documents(rows, "author")
    assert len(passages) == len(authors) and all(sum(a in p for a in authors) == 1 for p in passages)
    with pytest.raises(ValueError, match="layout"):
        bl.demo_documents(rows, "chapter")
