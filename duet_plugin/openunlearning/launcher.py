"""Fallback launcher: run OU's own ``src/train.py`` / ``src/eval.py`` with the plugin registered.

The Hydra search-path plugin already makes OU's commands work unchanged; this launcher is for setups where Hydra
plugin discovery is unavailable. It runs the framework's script exactly as ``python src/<script>.py`` would
(same ``__main__``, same cwd, so OU's relative paths keep their meaning), after importing OU's packages and
registering ours.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

from duet_plugin.openunlearning.registration import config_dir, register

OU_PACKAGES = ("data", "model", "trainer", "evals")
SCRIPTS = {"train": "train.py", "eval": "eval.py"}


class OURootNotFound(FileNotFoundError):
    """No OpenUnlearning checkout where we looked."""


def is_ou_root(path: Path) -> bool:
    return (path / "src" / "train.py").is_file() and (path / "configs" / "unlearn.yaml").is_file()


def find_ou_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The OU checkout: ``explicit`` (``--ou-root``), else ``$OU_ROOT``, else the current directory."""
    tried = []
    for label, candidate in (("--ou-root", explicit), ("$OU_ROOT", os.environ.get("OU_ROOT")), ("cwd", os.getcwd())):
        if not candidate:
            continue
        path = Path(candidate).expanduser().resolve()
        if is_ou_root(path):
            return path
        tried.append(f"{label}={path}")
        if label != "cwd":  # an explicit choice that is wrong is an error, not something to fall back from
            break
    raise OURootNotFound(
        "No OpenUnlearning checkout found (tried " + ", ".join(tried) + "): it must contain src/train.py and "
        "configs/unlearn.yaml. Clone https://github.com/locuslab/open-unlearning and pass --ou-root PATH, "
        "set OU_ROOT=PATH, or run from the checkout's root."
    )


def import_framework(root: Path) -> None:
    """Import OU's top-level packages from ``root/src`` (as its scripts do) and register the plugin."""
    src = str(root / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    for name in OU_PACKAGES:
        module = importlib.import_module(name)
        origin = Path(getattr(module, "__file__", "") or "").resolve()
        if root / "src" not in origin.parents:
            raise ImportError(
                f"Python module {name!r} comes from {origin}, not from OpenUnlearning at {src}. Another installed "
                f"package shadows OU's {name!r}; uninstall it or run in a clean environment."
            )
    register()


def hydra_plugin_discoverable() -> bool:
    """True when Hydra's plugin scan will find ``hydra_plugins.duet_plugin``."""
    try:
        import hydra_plugins
    except ImportError:
        return False
    return any(m.name == "duet_plugin" for m in pkgutil.iter_modules(hydra_plugins.__path__))


def run(command: str, overrides: Sequence[str], ou_root: str | os.PathLike[str] | None = None) -> None:
    """Run OU's ``train`` or ``eval`` script with Hydra ``overrides`` (in this process)."""
    if command not in SCRIPTS:
        raise ValueError(f"Unknown command {command!r}; use one of {sorted(SCRIPTS)}.")
    root = find_ou_root(ou_root)
    script = root / "src" / SCRIPTS[command]
    import_framework(root)
    args = list(overrides)
    if not hydra_plugin_discoverable() and not any(a.startswith("hydra.searchpath") for a in args):
        args.append(f"hydra.searchpath=[file://{config_dir()}]")
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")
