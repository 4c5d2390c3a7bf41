"""``duet-plugin demo --model PATH`` through OU's own scripts: a user's local instruct model goes through the demo's
fine-tune, DUET, GradDiff and OU's TOFU evaluation with the pretrained-model settings, and is left as it was. A
tiny Llama with a chat template stands in for the real model (SmolLM2 takes about an hour here, docs/demo.md)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from duet_plugin.demo.fictitious_authors import build_dataset
from duet_plugin.demo.pipeline import FINETUNED, GRADDIFF, RETAIN, SETTINGS_FILE, TEACHER, DemoSettings
from duet_plugin.demo.tiny_llama import build_tiny_llama, build_tokenizer, save_model

pytestmark = [pytest.mark.ou, pytest.mark.slow]


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_a_local_model_runs_the_whole_demo_with_the_pretrained_settings(ou_root: Path, tmp_path: Path) -> None:
    ds = build_dataset(n_authors=20, qa_per_author=5)
    texts = [f"{r['question']} {r['answer']}" for rows in ds.configs.values() for r in rows]
    tokenizer = build_tokenizer(texts, vocab_size=600)
    model = tmp_path / "my-instruct-model"
    save_model(build_tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2), tokenizer, model)
    before = _digest(model)

    workdir = tmp_path / "demo"
    env = {**os.environ, "OU_ROOT": str(ou_root), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "duet_plugin.cli", "demo", "--quick", "--model", str(model), "--workdir", str(workdir)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    assert "Fine-tuning my-instruct-model on every fact" in proc.stdout
    expected = DemoSettings.profile_settings("quick", str(model))
    assert DemoSettings.load(workdir / SETTINGS_FILE) == expected
    finetune_log = (workdir / "logs" / "finetune_demo_full.log").read_text().splitlines()[0]
    assert f"++trainer.args.max_steps={expected.finetune_steps}" in finetune_log
    assert f"trainer.args.learning_rate={expected.finetune_lr}" in finetune_log
    assert f"pretrained_model_name_or_path={workdir / 'models' / 'init'}" in finetune_log
    assert (workdir / "models" / "init").resolve() == model.resolve()
    # The pretrained settings' split: two of 20 authors (forget10), evaluated by OU on its 10 questions.
    summary = json.loads((workdir / "saves" / "eval" / "demo_full" / "TOFU_EVAL.json").read_text())
    assert len(summary["forget_Q_A_ROUGE"]["value_by_index"]) == 10
    table = (workdir / "demo_results.md").read_text()
    for label in (FINETUNED, TEACHER, GRADDIFF, RETAIN, "| model (forget10)"):
        assert label in table
    assert _digest(model) == before  # the user's model is read, never written
