"""`pip install .` ships what Hydra and OU need: the config tree, the prefix library and the Hydra plugin."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contains_configs_prefixes_and_hydra_plugin(tmp_path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel without build isolation here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("duet_plugin-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {str(p.relative_to(ROOT)) for p in (ROOT / "duet_plugin" / "configs").rglob("*.yaml")}
    assert configs and configs <= names
    assert "duet_plugin/core/prefixes.yaml" in names
    assert "duet_plugin/core/attacks/prompt_templates.yaml" in names
    assert "hydra_plugins/duet_plugin/duet_plugin_searchpath.py" in names
    assert "hydra_plugins/__init__.py" not in names  # must stay a namespace package shared with other plugins
    assert not any(n.startswith(("tests/", "scripts/")) for n in names)
