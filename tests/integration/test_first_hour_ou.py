"""A new user's first hour against a real OpenUnlearning checkout: ``duet-plugin demo --quick`` from the command
line, then the README's block of OU's own commands on a CPU, pasted as it is, on the demo's folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ou, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def readme_cpu_block() -> str:
    """The bash block under the README's "OU's own commands on a CPU" heading."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## OU's own commands on a CPU", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    assert match, "the README's CPU section has no bash block"
    return match.group(1)


@pytest.fixture(scope="module")
def quick_demo(ou_root: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    home = tmp_path_factory.mktemp("first_hour")
    env = {**os.environ, "OU_ROOT": str(ou_root), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "duet_plugin.cli", "demo", "--quick", "--workdir", str(home / "duet_demo")]
    proc = subprocess.run(cmd, cwd=home, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(
            f"duet-plugin demo --quick failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return home, proc


def test_the_quick_demo_prints_the_table_how_to_read_it_and_its_files(quick_demo) -> None:
    home, proc = quick_demo
    out = proc.stdout
    demo = home / "duet_demo"
    table = [line for line in out.splitlines() if line.startswith("| ")]
    labels = [line.split("|")[1].strip() for line in table[1:]]
    assert labels == [
        "fine-tuned (no prefix)",
        "teacher: fine-tuned + prefix",
        "DUET student (no prefix)",
        "GradDiff",
        "retain-only reference",
    ]
    assert "What it shows: fine-tuned (no prefix): forget ROUGE" in out
    assert "How to read the columns" in out and "suppressed in generation, not erased" in out
    for written in (demo / "demo_results.md", demo / "pareto.png"):
        assert f"  {written}" in out and written.stat().st_size > 0
    # live progress of the fine-tune: steps with a rate and an ETA (on a loaded machine the rate reads s/step and the
    # times may run past an hour)
    clock = r"(?:\d+:)?\d\d:\d\d"
    rate = r"(?:[\d.]+ steps/s|[\d.]+ s/step)"
    assert re.search(rf"finetune_demo_full: +\d+% \d+/\d+ steps \[{clock}<{clock}, {rate}\]", out)
    assert (demo / "logs" / "finetune_demo_full.log").read_text().count("\n") > 10


def test_the_readme_cpu_commands_run_as_pasted_on_the_demo_folder(quick_demo, ou_root: Path) -> None:
    home, _ = quick_demo
    env = {**os.environ, "OU_ROOT": str(ou_root), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_cpu_block()],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    summary = home / "duet_demo" / "saves" / "eval" / "my_duet_eval" / "TOFU_SUMMARY.json"
    assert summary.is_file(), proc.stderr[-3000:]
    config = (summary.parent / ".hydra" / "config.yaml").read_text()
    unlearned = home / "duet_demo" / "saves" / "unlearn" / "my_duet"
    assert config.count(f"pretrained_model_name_or_path: {unlearned}\n") == 2  # the unlearned model was evaluated
    values = json.loads(summary.read_text())
    assert values["forget_quality"] is not None  # retain_logs_path was read
    assert 0 <= values["forget_Q_A_ROUGE"] <= 1
