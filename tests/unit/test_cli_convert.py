"""``duet-plugin convert``: every source to unified JSONL, no silent overwrite, resumable LLM builder, exit 2 on bad
input with a one-line message naming the file and line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from duet_plugin.cli import main
from duet_plugin.core.query_builders import LLMQueryBuilder
from duet_plugin.core.unified import read_records
from duet_plugin.demo.fictitious_authors import write_hub_layout
from duet_plugin.demo.tiny_llama import build_tiny_llama, build_tokenizer, save_model

PARAGRAPHS = [
    "Marie Curie discovered radium in 1898 after years of careful work. "
    "The committee met in the old harbour town on a cold morning in March.",
    "The harbour town of Elmsworth was founded in 1721 by fishermen from the south coast. "
    "Ships sailed north every spring to trade wool for salt and timber.",
]


def _convert(capsys, *args: str | Path) -> tuple[int, str, str]:
    rc = main(["convert", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory) -> Path:
    """A saved tiny random Llama (untied random output layer, so its replies vary) with a ChatML tokenizer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops on a busy shared CPU: more threads are many times slower
    tok = build_tokenizer(PARAGRAPHS * 5 + ["1. What is it? 2. Who was there?\n"] * 5, vocab_size=400)
    model = build_tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=4, seed=7)
    model.config.tie_word_embeddings = False
    g = torch.Generator().manual_seed(7)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=g))
    yield save_model(model, tok, tmp_path_factory.mktemp("generator") / "tiny")
    torch.set_num_threads(threads)


def test_tofu_folder(tmp_path, capsys, authors_dataset) -> None:
    folder = write_hub_layout(authors_dataset, tmp_path / "hub")
    out = tmp_path / "forget.jsonl"
    rc, stdout, _ = _convert(capsys, "tofu", folder, "--config", "forget10", "-o", out, "--stream", "forget")
    assert rc == 0 and f"to {out}" in stdout
    rows = authors_dataset.configs["forget10"]
    records = read_records(out)
    assert [(r.prompt, r.response, r.source) for r in records] == [
        (r["question"], r["answer"], "tofu_qa") for r in rows
    ]


def test_qa_adversarial_prefill_and_mcq(tmp_path, capsys) -> None:
    qa = _jsonl(tmp_path / "qa.jsonl", [{"q": "Where was she born?", "a": "She was born in Elmsworth."}])
    out = tmp_path / "adv.jsonl"
    args = ["--question-key", "q", "--answer-key", "a", "--prefill-words", "2"]
    rc, _, _ = _convert(capsys, "qa", qa, "-o", out, "--stream", "adversarial", *args)
    assert rc == 0
    assert [r.to_dict() for r in read_records(out)] == [
        {
            "prompt": "Where was she born?",
            "stream": "adversarial",
            "source": "qa",
            "prefill": "She was",
            "response": "born in Elmsworth.",
        }
    ]
    mcq = _jsonl(
        tmp_path / "mcq.jsonl", [{"question": "Oldest port?", "choices": ["Dunmoor", "Elmsworth"], "answer": 1}]
    )
    rc, _, _ = _convert(capsys, "mcq", mcq, "-o", tmp_path / "mcq_out.jsonl", "--stream", "boundary")
    assert rc == 0
    (record,) = read_records(tmp_path / "mcq_out.jsonl")
    assert (record.prompt, record.response, record.source) == (
        "Oldest port?\nA. Dunmoor\nB. Elmsworth",
        "Elmsworth",
        "mcq",
    )


def test_muse_folder_with_template_builder_is_seeded(tmp_path, capsys) -> None:
    folder = tmp_path / "muse-bench" / "MUSE-News"
    folder.mkdir(parents=True)
    (folder / "raw_forget.json").write_text(json.dumps([{"text": t} for t in PARAGRAPHS]))
    card = "---\nconfigs:\n- config_name: raw\n  data_files:\n  - split: forget\n    path: raw_forget.json\n---\n"
    (folder / "README.md").write_text(card)
    outs = []
    for name in ("a.jsonl", "b.jsonl"):
        rc, _, _ = _convert(
            capsys, "muse", folder, "-o", tmp_path / name, "--stream", "forget", "--template", "cloze", "--seed", "3"
        )
        assert rc == 0
        outs.append((tmp_path / name).read_text())
    assert outs[0] == outs[1]
    records = read_records(tmp_path / "a.jsonl")
    assert len(records) == 4 and {r.source for r in records} == {"muse_text"}
    assert all(r.prompt.startswith("Fill in the blank: ") and r.response for r in records)
    rc, _, _ = _convert(capsys, "muse", folder, "-o", tmp_path / "c.jsonl", "--stream", "forget", "--max-records", "2")
    assert rc == 0 and len(read_records(tmp_path / "c.jsonl")) == 2


def test_wmdp_corpus_and_unified(tmp_path, capsys) -> None:
    corpus = tmp_path / "cyber-forget-corpus.jsonl"
    corpus.write_text(json.dumps({"text": PARAGRAPHS[0]}) + "\n" + json.dumps(PARAGRAPHS[1]) + "\n")
    out = tmp_path / "wmdp.jsonl"
    rc, _, _ = _convert(capsys, "wmdp", corpus, "-o", out, "--stream", "forget", "--template", "question")
    assert rc == 0
    records = read_records(out)
    assert len(records) == 4 and all(r.prompt.endswith("?") and r.source == "wmdp_corpus" for r in records)

    unified = tmp_path / "mixed.json"
    unified.write_text(json.dumps([{"prompt": "Q1?"}, {"prompt": "Q2?", "stream": "retain", "source": "x"}]))
    rc, _, _ = _convert(capsys, "unified", unified, "-o", tmp_path / "u.jsonl", "--stream", "boundary")
    assert rc == 0
    assert [(r.prompt, r.stream) for r in read_records(tmp_path / "u.jsonl")] == [
        ("Q1?", "boundary"),
        ("Q2?", "retain"),
    ]


def test_existing_output_is_never_overwritten_unless_asked(tmp_path, capsys) -> None:
    qa = _jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "A"}])
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    rc, _, err = _convert(capsys, "qa", qa, "-o", out, "--stream", "forget")
    assert rc == 2 and out.read_text() == "precious\n"
    assert err.count("\n") == 1 and "--overwrite" in err and str(out) in err
    rc, _, _ = _convert(capsys, "qa", qa, "-o", out, "--stream", "forget", "--overwrite")
    assert rc == 0 and [r.prompt for r in read_records(out)] == ["Q?"]


@pytest.mark.parametrize(
    ("fmt", "name", "content", "extra", "expected"),
    [
        ("qa", "data.csv", "question,answer\nWho?,Me\n", [], "data.csv:1: not valid JSON"),
        ("qa", "qa.jsonl", '{"question": "Q?"}\n"a string"\n', [], "qa.jsonl:2: expected a JSON object"),
        ("qa", "qa.jsonl", '{"question": "Q?"}\n{"answer": "A"}\n', [], "qa.jsonl:2: no 'question' field"),
        ("qa", "empty.jsonl", "", [], "empty.jsonl: no records"),
        ("tofu", "t.json", '[{"question": "Q?"}]', ["--builder", "llm"], "applies to muse and wmdp"),
        ("qa", "qa.jsonl", '{"question": "Q?", "answer": "a b c"}', ["--prefill-words", "1"], "'adversarial' stream"),
        ("wmdp", "c.jsonl", '{"text": "ok"}\n{"body": "x"}\n', [], "c.jsonl:2: no 'text' field"),
        ("wmdp", "c.jsonl", "Too short.\n", [], "c.jsonl: no sentence of at least 10 words"),
        ("muse", "m.jsonl", '{"text": "A long enough sentence to query."}', ["--builder", "llm"], "needs --model"),
        ("mcq", "m.jsonl", '{"question": "Q?", "choices": ["a", "b"], "answer": 5}', [], "m.jsonl:1: 'answer'"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, fmt, name, content, extra, expected) -> None:
    path = tmp_path / name
    path.write_text(content)
    out = tmp_path / "out.jsonl"
    rc, stdout, err = _convert(capsys, fmt, path, "-o", out, "--stream", "forget", *extra)
    assert rc == 2 and expected in err and err.startswith("duet-plugin convert: ")
    assert err.count("\n") == 1 and stdout == "" and not out.exists()


def test_missing_stream_and_missing_input(tmp_path, capsys) -> None:
    qa = _jsonl(tmp_path / "qa.jsonl", [{"question": "Q?"}])
    rc, _, err = _convert(capsys, "qa", qa, "-o", tmp_path / "o.jsonl")
    assert rc == 2 and "--stream is required" in err
    rc, _, err = _convert(capsys, "qa", tmp_path / "nope.jsonl", "-o", tmp_path / "o.jsonl", "--stream", "forget")
    assert rc == 2 and "nope.jsonl" in err


def test_exit_code_of_the_real_command(tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n")
    cmd = [sys.executable, "-m", "duet_plugin.cli", "convert", "qa", str(bad), "-o", str(tmp_path / "o.jsonl")]
    proc = subprocess.run([*cmd, "--stream", "forget"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"duet-plugin convert: {bad}:1: not valid JSON (Expecting value); expected JSON lines or a JSON array"
    )


def test_help_explains_overwrite_and_resume(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "never overwritten unless --overwrite" in text and "resumes where it stopped" in text


def test_llm_builder_writes_and_resumes(tmp_path, capsys, generator_dir, monkeypatch) -> None:
    corpus = tmp_path / "cyber-forget-corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": p}) + "\n" for p in PARAGRAPHS))
    out = tmp_path / "llm.jsonl"
    args = ["wmdp", corpus, "-o", out, "--stream", "forget", "--builder", "llm", "--model", generator_dir]
    args += ["--questions", "2", "--batch-size", "2", "--max-new-tokens", "40", "--passage-words", "14"]
    calls: list[int] = []
    real_generate = LLMQueryBuilder.generate
    monkeypatch.setattr(
        LLMQueryBuilder, "generate", lambda self, passages: calls.append(len(passages)) or real_generate(self, passages)
    )
    rc, stdout, err = _convert(capsys, *args)
    assert rc == 0, err
    assert calls == [2, 2] and "4 passages" in stdout  # 4 sentences of 11-15 words: one passage each
    records = read_records(out)
    assert records and {r.source for r in records} == {"wmdp_corpus"} and {r.stream for r in records} == {"forget"}
    assert out.with_name("llm.jsonl.progress").is_file()
    first = out.read_text()

    calls.clear()
    rc, _, _ = _convert(capsys, *args)  # rerun without --overwrite: resumes, nothing left to do
    assert rc == 0 and calls == [] and out.read_text() == first
    rc, _, err = _convert(capsys, *args, "--questions", "1")  # other settings: refuse to mix them in
    assert rc == 2 and "n_questions differ" in err and out.read_text() == first
    rc, _, _ = _convert(capsys, *args, "--overwrite")
    assert rc == 0 and calls == [2, 2] and out.read_text() == first  # greedy: the same again

    template_out = tmp_path / "template.jsonl"
    assert _convert(capsys, "wmdp", corpus, "-o", template_out, "--stream", "forget")[0] == 0
    rc, _, err = _convert(capsys, *args[:3], template_out, *args[4:])  # not an LLM-builder output: no resume
    assert rc == 2 and "not a resumable" in err
