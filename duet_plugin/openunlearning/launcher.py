"""Fallback launcher: run OU's own ``src/train.py`` / ``src/eval.py`` with the plugin registered.

The Hydra search-path plugin already makes OU's commands work unchanged; this launcher is for setups where Hydra
plugin discovery is unavailable. It runs the framework's script exactly as ``python src/<script>.py`` would
(same ``__main__``, same cwd, so OU's relative paths keep their meaning), after importing OU's packages and
registering ours.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

from duet_plugin.openunlearning.registration import config_dir, register
from duet_plugin.openunlearning.setup_ou import SetupError, config_file, is_ou_root, recorded_ou_root

OU_PACKAGES = ("data", "model", "trainer", "evals")
SCRIPTS = {"train": "train.py", "eval": "eval.py"}


class OURootNotFound(FileNotFoundError):
    """No OpenUnlearning checkout where we looked: ``problem`` says what, ``fix`` what to do."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}. {fix}")
        self.problem, self.fix = problem, fix


class LaunchError(ValueError):
    """An override that cannot work, found before OU starts; the message names the fix."""


#: Overrides naming a local model folder the run loads (a Hub id is ``org/name``: one slash).
MODEL_KEYS = (
    "model.model_args.pretrained_model_name_or_path",
    "model.tokenizer_args.pretrained_model_name_or_path",
    "trainer.method_args.teacher",
)


def find_ou_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The OU checkout: ``explicit`` (``--ou-root``), else ``$OU_ROOT``, else the current directory when it is one,
    else the checkout ``duet-plugin setup-ou`` recorded. An explicit choice that is wrong is an error, never
    something to fall back from."""
    missing = "it must contain src/train.py and configs/unlearn.yaml"
    for label, candidate in (("--ou-root", explicit), ("OU_ROOT", os.environ.get("OU_ROOT"))):
        if candidate:
            path = Path(candidate).expanduser().resolve()
            if is_ou_root(path):
                return path
            raise OURootNotFound(
                f"{label}={path} is not an OpenUnlearning checkout ({missing})",
                f"Point {label} at the folder that holds OU's src/ and configs/, or run `duet-plugin setup-ou` "
                "and leave it unset.",
            )
    if is_ou_root(Path.cwd()):
        return Path.cwd().resolve()
    try:
        recorded = recorded_ou_root()
    except SetupError as err:
        raise OURootNotFound(str(err).rstrip("."), "Delete that file and run `duet-plugin setup-ou` again.") from err
    if recorded is not None:
        if is_ou_root(recorded):
            return recorded.resolve()
        raise OURootNotFound(
            f"The OpenUnlearning checkout recorded in {config_file()} ({recorded}) is gone or incomplete ({missing})",
            "Run `duet-plugin setup-ou` again, or pass --ou-root PATH.",
        )
    raise OURootNotFound(
        "No OpenUnlearning checkout found (no --ou-root, no OU_ROOT, none recorded, and the current directory is "
        "not one)",
        "Run `duet-plugin setup-ou` to fetch it (--from PATH for a local clone or mirror), or pass --ou-root PATH / "
        "set OU_ROOT.",
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


def experiments(root: Path) -> list[str]:
    """Every ``experiment=`` name OU and the plugin ship (``unlearn/tofu/duet``, ...)."""
    names = set()
    for base in (root / "configs" / "experiment", config_dir() / "experiment"):
        names.update(p.relative_to(base).with_suffix("").as_posix() for p in base.rglob("*.yaml"))
    return sorted(names)


def _override(arg: str) -> tuple[str, str] | None:
    key, sep, value = arg.partition("=")
    return (key.lstrip("+~"), value) if sep else None


def preflight(root: Path, overrides: Sequence[str], cwd: Path | None = None) -> None:
    """Catch what would fail only after OU's imports and model loading: an experiment that does not exist (answered
    with the closest names), a local model or teacher folder that does not exist."""
    cwd = cwd or Path.cwd()
    # An experiment from the user's own config folders (hydra.searchpath) is for Hydra to find.
    own_configs = any((_override(a) or ("", ""))[0] == "hydra.searchpath" for a in overrides)
    for arg in overrides:
        parsed = _override(arg)
        if parsed is None:
            continue
        key, value = parsed
        if key == "experiment" and not own_configs:
            known = experiments(root)
            name = value.removesuffix(".yaml")
            if name not in known:
                close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
                family = sorted({k for k in known if k.rsplit("/", 1)[0] == name.rsplit("/", 1)[0]})
                hint = close or family
                raise LaunchError(
                    f"experiment={value} does not exist in OU's or the plugin's configs/experiment. "
                    + (f"Closest: {', '.join(hint)}." if hint else f"Some that exist: {', '.join(known[:8])}, ...")
                )
        elif key in MODEL_KEYS and value and not value.startswith(("[", "{", "$", "null")):
            path = Path(value).expanduser()
            local = path.is_absolute() or value.startswith((".", "~")) or value.count("/") > 1
            if local and not (path if path.is_absolute() else cwd / path).exists():
                raise LaunchError(
                    f"{key}={value}: no such folder{'' if path.is_absolute() else f' (relative to {cwd})'}. Point it "
                    "at a saved model folder (config.json and weights), e.g. an earlier run's saves/.../<task_name>."
                )


def run(command: str, overrides: Sequence[str], ou_root: str | os.PathLike[str] | None = None) -> None:
    """Run OU's ``train`` or ``eval`` script with Hydra ``overrides`` (in this process)."""
    if command not in SCRIPTS:
        raise ValueError(f"Unknown command {command!r}; use one of {sorted(SCRIPTS)}.")
    root = find_ou_root(ou_root)
    preflight(root, overrides)
    script = root / "src" / SCRIPTS[command]
    import_framework(root)
    args = list(overrides)
    if not hydra_plugin_discoverable() and not any(a.startswith("hydra.searchpath") for a in args):
        args.append(f"hydra.searchpath=[file://{config_dir()}]")
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")
