"""``duet-plugin doctor``: say what is wrong with an OU + plugin setup, and how to fix it."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from duet_plugin.openunlearning.launcher import OURootNotFound, find_ou_root, hydra_plugin_discoverable
from duet_plugin.openunlearning.registration import config_dir
from duet_plugin.openunlearning.setup_ou import SHORT, commit_of

# OU commits the plugin has been run against, and what they need.
KNOWN_OU_COMMITS = {
    "d3d7cf9": "OU snapshot of 2025-12-24 (transformers 4.45.1): tested end to end on CPU",
}
# (distribution, required?, known-good range, why)
PACKAGES = (
    ("torch", True, ">=2.1", "tested with 2.13.0 (CPU)"),
    ("transformers", True, ">=4.45.1,<5", "OU's snapshot pins 4.45.1; OU main uses 4.51.x"),
    ("hydra-core", True, ">=1.3,<1.4", "OU pins hydra-core 1.3"),
    ("datasets", True, None, "OU's data loading"),
    ("accelerate", True, None, "HF Trainer"),
    ("deepspeed", True, None, "OU's trainer package imports it unconditionally"),
    ("lm-eval", True, None, "OU's evals package imports it unconditionally (pin 0.4.8)"),
    ("peft", False, "<0.18", "LoRA; peft >= 0.18 fails with torch 2.13 (get_peft_model AttributeError)"),
)


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _in_range(version: str, spec: str) -> bool:
    from packaging.specifiers import SpecifierSet

    try:
        return Version(version) in SpecifierSet(spec)
    except InvalidVersion:
        return False


def ou_cpu_pins() -> dict[str, str]:
    """The exact versions of the plugin's ``ou-cpu`` extra (the stack tested on a CPU), by distribution name."""
    from packaging.requirements import InvalidRequirement, Requirement

    pins = {}
    for line in md.requires("duet-plugin") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and req.marker.evaluate({"extra": "ou-cpu"}) and str(req.specifier):
            pins[req.name.lower()] = str(req.specifier)
    return pins


def install_hint(dist: str) -> str:
    """A pip command that installs ``dist`` at the version the plugin was tested with."""
    spec = ou_cpu_pins().get(dist.lower(), "")
    return f'pip install "{dist}{spec}"' + (" (the version duet-plugin's ou-cpu extra pins)" if spec else "")


def check_packages() -> list[Check]:
    checks = []
    for dist, required, spec, why in PACKAGES:
        version = _version(dist)
        if version is None:
            status = "fail" if required else "warn"
            checks.append(Check(dist, status, f"not installed ({why})", install_hint(dist)))
        elif spec and not _in_range(version, spec):
            checks.append(Check(dist, "warn", f"{version} is outside {spec} ({why})", f'pip install "{dist}{spec}"'))
        else:
            checks.append(Check(dist, "ok", version))
    return checks


def check_ou(ou_root: str | None) -> list[Check]:
    try:
        root = find_ou_root(ou_root)
    except OURootNotFound as err:
        return [Check("OpenUnlearning", "fail", err.problem, err.fix.rstrip("."))]
    checks = [Check("OpenUnlearning", "ok", str(root))]
    try:
        commit = (commit_of(root) or "")[:7]
    except OSError:  # git is missing
        commit = ""
    if not commit:
        checks.append(
            Check(
                "OU commit",
                "warn",
                "unknown (not a git checkout, and its files are not those of a tested commit)",
                f"duet-plugin setup-ou --dir NEW_FOLDER (fetches {SHORT})",
            )
        )
    elif commit in KNOWN_OU_COMMITS:
        checks.append(Check("OU commit", "ok", f"{commit}: {KNOWN_OU_COMMITS[commit]}"))
    else:
        checks.append(
            Check(
                "OU commit",
                "warn",
                f"{commit} has not been tested with duet-plugin",
                f"tested: {', '.join(KNOWN_OU_COMMITS)}; report problems with the commit id",
            )
        )
    pins = _ou_pins(root)
    installed = _version("transformers")
    if "transformers" in pins and installed and pins["transformers"] != installed:
        checks.append(
            Check(
                "transformers vs OU",
                "warn",
                f"OU pins {pins['transformers']}, installed {installed}",
                f"pip install transformers=={pins['transformers']}",
            )
        )
    checks.append(_check_registration(root))
    return checks


def _ou_pins(root: Path) -> dict[str, str]:
    pins = {}
    req = root / "requirements.txt"
    for line in req.read_text().splitlines() if req.is_file() else []:
        if "==" in line and not line.lstrip().startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def _check_registration(root: Path) -> Check:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import data, model, trainer, evals, evals.metrics;"
        "from duet_plugin.openunlearning.registration import _components, register;"
        "register();"
        "names = [(a, n, n in getattr(sys.modules[m], a)) for m, a, e in _components() for n in e];"
        "print('REGISTERED', len(names), ','.join(n for _, n, ok in names if not ok) or '-')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(root / "src")], capture_output=True, text=True, cwd=root, timeout=300
    )
    result = next((line.split() for line in proc.stdout.splitlines() if line.startswith("REGISTERED")), None)
    if proc.returncode == 0 and result is not None:
        _, count, missing = result
        if missing == "-":
            return Check("registration", "ok", f"OU imports; all {count} plugin components are in OU's registries")
        return Check(
            "registration",
            "fail",
            f"not in OU's registries after register(): {missing}",
            "reinstall the plugin (pip install -e .) and check for a name clash warning",
        )
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return Check(
        "registration",
        "fail",
        f"importing OU and registering failed: {last}",
        "fix the error above (a missing package: install the version its check above names)",
    )


def check_plugin() -> list[Check]:
    checks = []
    try:
        checks.append(Check("configs", "ok", str(config_dir())))
    except FileNotFoundError as err:
        checks.append(Check("configs", "fail", str(err), 'reinstall from your duet-plugin clone: pip install -e "."'))
    if hydra_plugin_discoverable():
        checks.append(Check("Hydra plugin", "ok", "hydra_plugins.duet_plugin is discoverable"))
    else:
        checks.append(
            Check(
                "Hydra plugin",
                "warn",
                "Hydra will not find hydra_plugins.duet_plugin",
                "reinstall the package, or run OU through `duet-plugin train|eval ...`",
            )
        )
    return checks


def diagnose(ou_root: str | None = None) -> list[Check]:
    return [Check("python", "ok", sys.version.split()[0]), *check_packages(), *check_plugin(), *check_ou(ou_root)]


def report(checks: list[Check]) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = []
    for c in checks:
        lines.append(f"[{marks[c.status]}] {c.name}: {c.detail}")
        if c.fix and c.status != "ok":
            lines.append(f"         fix: {c.fix}")
    return "\n".join(lines)
