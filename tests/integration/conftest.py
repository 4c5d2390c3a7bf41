"""Integration fixtures: a real OpenUnlearning checkout (``$OU_ROOT``) and a local workspace.

The workspace holds everything OU would fetch from the Hub, made here: a tiny Llama with a ChatML tokenizer,
the project's fictitious-author dataset laid out as ``locuslab/TOFU``, a MUSE-style dataset as
``muse-bench/MUSE-News`` (raw, knowmem, verbmem, privleak) and WMDP-style corpora under
``data/wmdp/wmdp-corpora``. OU's scripts run with the workspace as cwd, so its relative paths and
``load_dataset`` calls resolve there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from duet_plugin.demo.fictitious_authors import build_dataset, write_hub_layout
from duet_plugin.demo.tiny_llama import build_tiny_llama, build_tokenizer, save_model
from duet_plugin.openunlearning.launcher import is_ou_root

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
}


@pytest.fixture(scope="session")
def ou_root() -> Path:
    root = os.environ.get("OU_ROOT")
    if not root:
        pytest.skip("OU_ROOT is not set: point it at an OpenUnlearning checkout to run the integration tests")
    path = Path(root).resolve()
    if not is_ou_root(path):
        pytest.fail(f"OU_ROOT={path} is not an OpenUnlearning checkout (no src/train.py / configs/unlearn.yaml)")
    return path


@pytest.fixture(scope="session")
def ou_imported(ou_root: Path) -> Path:
    """OU's packages imported in this process (as its scripts do) and the plugin registered."""
    from duet_plugin.openunlearning.launcher import import_framework

    import_framework(ou_root)
    return ou_root


def _write_hub_dataset(root: Path, repo: str, configs: dict[str, dict[str, list[dict]]]) -> None:
    """A local Hub-style dataset folder: one JSON file per (config, split) and a card naming them all."""
    folder = root / repo
    folder.mkdir(parents=True, exist_ok=True)
    card = ["---", "configs:"]
    for config, splits in configs.items():
        card += [f"- config_name: {config}", "  data_files:"]
        for split, rows in splits.items():
            (folder / f"{config}_{split}.json").write_text(json.dumps(rows))
            card += [f"  - split: {split}", f"    path: {config}_{split}.json"]
    (folder / "README.md").write_text("\n".join([*card, "---", ""]))


def _muse_configs(ds) -> dict[str, dict[str, list[dict]]]:
    """MUSE-News's configs (raw, knowmem, verbmem, privleak) filled from the fictitious authors."""

    def paragraphs(config: str) -> list[str]:
        rows = ds.configs[config]
        return [" ".join(r["answer"] for r in rows[i : i + 4]) for i in range(0, len(rows), 4)]

    def qa(config: str, n: int) -> list[dict]:
        return [{"question": r["question"], "answer": r["answer"]} for r in ds.configs[config][:n]]

    forget, retain = paragraphs("forget10"), paragraphs("retain90")
    return {
        "raw": {"forget": [{"text": t} for t in forget], "retain1": [{"text": t} for t in retain]},
        "knowmem": {
            "forget_qa": qa("forget10", 6),
            "forget_qa_icl": qa("forget10", 8)[6:],
            "retain_qa": qa("retain90", 6),
            "retain_qa_icl": qa("retain90", 8)[6:],
        },
        "verbmem": {"forget": [{"prompt": " ".join(t.split()[:8]), "gt": " ".join(t.split()[8:])} for t in forget]},
        "privleak": {"forget": [{"text": t} for t in forget], "holdout": [{"text": t} for t in retain[:4]]},
    }


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ou_workspace")
    ds = build_dataset(n_authors=20, qa_per_author=4, seed=0)
    write_hub_layout(ds, ws)
    texts = [f"{r['question']} {r['answer']}" for rows in ds.configs.values() for r in rows]
    tok = build_tokenizer(texts, vocab_size=800)
    save_model(build_tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=4), tok, ws / "tiny")

    muse = _muse_configs(ds)
    _write_hub_dataset(ws, "muse-bench/MUSE-News", muse)
    corpora = ws / "data" / "wmdp" / "wmdp-corpora"
    corpora.mkdir(parents=True)
    for name, split in (("forget", "forget"), ("retain", "retain1")):
        lines = [json.dumps(row) for row in muse["raw"][split]]
        (corpora / f"cyber-{name}-corpus.jsonl").write_text("\n".join(lines) + "\n")
    return ws


@pytest.fixture(scope="session")
def run_ou(ou_root: Path, workspace: Path):
    """``run_ou(script, args, launcher=False, check=True)``: OU's ``src/<script>.py`` (or ``duet-plugin <script>``)
    as a subprocess in the workspace; fails the test with its output when ``check`` and it fails."""

    def run(script: str, args: list[str], launcher: bool = False, check: bool = True):
        return _run(ou_root, workspace, script, args, launcher=launcher, check=check)

    return run


def _run(
    ou_root: Path, workspace: Path, script: str, args: list[str], launcher: bool, check: bool, timeout: int = 600
) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE_ENV, "HF_DATASETS_CACHE": str(workspace / ".hf_datasets_cache")}
    if launcher:
        cmd = [sys.executable, "-m", "duet_plugin.cli", script, "--ou-root", str(ou_root), *args]
    else:
        cmd = [sys.executable, str(ou_root / "src" / f"{script}.py"), *args]
    proc = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd[:3])} ... failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc
