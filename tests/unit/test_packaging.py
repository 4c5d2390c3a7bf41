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


def _requirement_names(lines: list[str], extras: set[str]) -> set[str]:
    from packaging.requirements import Requirement

    names = set()
    for line in lines:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras):
            names.add(req.name.lower().replace("_", "-"))
    return names


def _closure(names: set[str]) -> set[str]:
    """``names`` and everything they require, as installed here."""
    import importlib.metadata as md

    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += list(_requirement_names(md.requires(name) or [], set()))
        except md.PackageNotFoundError:
            continue
    return seen


def test_the_dev_extra_installs_every_package_the_unit_tests_import() -> None:
    """A unit test's third-party import must come with ``pip install -e ".[dev]"`` (core dependencies, the dev extra
    and what they pull in), not only with the OU stack."""
    import ast
    import importlib.metadata as md

    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = _requirement_names(project["dependencies"], set())
    direct |= _requirement_names(project["optional-dependencies"]["dev"], set())
    provided = _closure(direct)
    dists = {mod: [d.lower().replace("_", "-") for d in ds] for mod, ds in md.packages_distributions().items()}
    local = {"duet_plugin", "hydra_plugins", "tests", "conftest"}
    imported = {}
    for path in (ROOT / "tests" / "unit").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    imported.setdefault(top, path.name)
    unprovided = {top: where for top, where in imported.items() if top in dists and not set(dists[top]) & provided}
    # bitsandbytes' 4-bit kernels are only exercised on a CUDA GPU, where OU's own requirements install it.
    unprovided.pop("bitsandbytes", None)
    assert not unprovided, f"imported by unit tests but not installed by the dev extra: {unprovided}"
