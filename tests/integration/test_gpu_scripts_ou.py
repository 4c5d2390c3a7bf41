"""The prepared GPU benchmark's CPU rehearsal: scripts/gpu/bench_llama1b.py --dry-run runs the same code path on the
CPU at the Llama-3.2-1B shape's miniature, in bf16, and prints the ratio tables against GradDiff, NPO and SFT."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ou


def test_bench_llama1b_dry_run_prints_the_ratio_tables(ou_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OU_ROOT": str(ou_root), "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu" / "bench_llama1b.py"), "--dry-run", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "bench_llama1b: PASS" in log
    assert "llama-3.2-1b-mini's shape" in log and "4 heads / 1 KV heads" in log and "rope_theta 500,000" in log
    assert "precision: weights bfloat16" in log
    against = log.split("### Against baselines")[1]
    for label in ("GradDiff (NLL retain)", "NPO", "SFT (NLL, forget+retain in one batch)"):
        assert f"step vs {label}" in against and f"peak vs {label}" in against
    for label in ("DUET precomputed", "DUET online", "BiDistill"):
        assert f"| {label} |" in against
    assert (tmp_path / "bench_llama1b_dry.json").is_file() and (tmp_path / "bench_llama1b_dry.log").is_file()
