"""Integration fixtures: a real OpenUnlearning checkout (``$OU_ROOT``) and a local workspace.

The workspace holds everything OU would fetch from the Hub, made here: a tiny Llama with a ChatML tokenizer,
the project's fictitious-author dataset laid out as ``locuslab/TOFU``, a MUSE-style dataset as
``muse-bench/MUSE-News`` (raw, knowmem, verbmem, privleak) and WMDP-style corpora under
``data/wmdp/wmdp-corpora``. OU's scripts run with the workspace as cwd, so its relative paths and
``load_dataset`` calls resolve there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from duet_plugin.demo.benchmark_layouts import wmdp_corpus_files, workspace_muse_configs, write_files, write_hub_dataset
from duet_plugin.demo.fictitious_authors import build_dataset, write_hub_layout
from duet_plugin.demo.tiny_llama import build_tiny_llama, build_tokenizer, save_model
from duet_plugin.openunlearning.launcher import is_ou_root
from duet_plugin.openunlearning.setup_ou import SetupError, recorded_ou_root

# Read once, before the autouse fixture gives every test a private config file: $OU_ROOT, else the checkout
# `duet-plugin setup-ou` recorded.
try:
    _RECORDED = recorded_ou_root()
except SetupError:
    _RECORDED = None
OU_ROOT = os.environ.get("OU_ROOT") or (str(_RECORDED) if _RECORDED else None)

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
}


@pytest.fixture(scope="session")
def ou_root() -> Path:
    if not OU_ROOT:
        pytest.skip("no OpenUnlearning checkout: run `duet-plugin setup-ou` or set OU_ROOT to run the OU tests")
    path = Path(OU_ROOT).resolve()
    if not is_ou_root(path):
        pytest.fail(f"{path} (OU_ROOT or setup-ou's record) is not an OpenUnlearning checkout")
    return path


@pytest.fixture(scope="session")
def ou_imported(ou_root: Path) -> Path:
    """OU's packages imported in this process (as its scripts do) and the plugin registered."""
    from duet_plugin.openunlearning.launcher import import_framework

    import_framework(ou_root)
    return ou_root


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ou_workspace")
    ds = build_dataset(n_authors=20, qa_per_author=4, seed=0)
    write_hub_layout(ds, ws)
    texts = [f"{r['question']} {r['answer']}" for rows in ds.configs.values() for r in rows]
    tok = build_tokenizer(texts, vocab_size=800)
    save_model(build_tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=4), tok, ws / "tiny")

    muse = workspace_muse_configs(ds)
    write_hub_dataset(ws, "muse-bench/MUSE-News", muse)
    raw = {split: [row["text"] for row in rows] for split, rows in muse["raw"].items()}
    write_files(wmdp_corpus_files(ws, "cyber", raw["forget"], raw["retain1"], json_lines=True))
    return ws


@pytest.fixture(scope="session")
def run_ou(ou_root: Path, workspace: Path):
    """``run_ou(script, args, launcher=False, check=True, cwd=None)``: OU's ``src/<script>.py`` (or ``duet-plugin
    <script>``) as a subprocess in the workspace (or ``cwd``, e.g. another dataset layout); fails the test with its
    output when ``check`` and it fails."""

    def run(script: str, args: list[str], launcher: bool = False, check: bool = True, cwd: Path | None = None):
        return _run(ou_root, cwd or workspace, script, args, launcher=launcher, check=check)

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
