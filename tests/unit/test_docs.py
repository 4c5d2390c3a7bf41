"""The documentation's promises that a test can hold: links and named files exist, the README fits on a page, and CI
runs the README's test command."""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A backticked repository path: a top-level folder of this repository, then a path (``{a,b}`` alternatives allowed).
# "OU's `configs/...`" names a file of OpenUnlearning's, not of this repository.
REPO_PATH = re.compile(
    r"(?<!OU's )`((?:docs|scripts|duet_plugin|community|tests|configs|hydra_plugins|\.ci)/[\w./{},*-]*)`"
)
#: Files of the developers' shared folder, which is not part of the repository (names built here, so that this file
#: does not name them itself).
SHARED = "../" + "shared"
NOT_IN_REPO = tuple(
    f"{stem}.md" for stem in ("design", "methods", "openunlearning-on-cpu", "openunlearning-internals", "exemplars")
)


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    return [ROOT / line for line in out.stdout.splitlines()]


def _docs() -> list[Path]:
    return [p for p in _tracked("README.md", "docs", "community") if p.suffix == ".md"]


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _expand(path: str) -> list[str]:
    parts = re.split(r"\{([^}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def test_every_relative_link_resolves() -> None:
    broken = []
    for doc in _docs():
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.MULTILINE)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_docs_name_only_files_in_the_repository() -> None:
    missing = []
    for doc in _docs():
        for path in REPO_PATH.findall(doc.read_text()):
            for candidate in _expand(path.rstrip(".,")):
                if "*" not in candidate and not (ROOT / candidate).exists():
                    missing.append(f"{doc.relative_to(ROOT)}: {candidate}")
    assert not missing, "\n".join(missing)


def test_nothing_names_the_developers_shared_docs() -> None:
    files = [p for p in _tracked() if p.suffix in (".md", ".py", ".yaml", ".sh", "") and p.is_file()]
    found = []
    for path in files:
        text = path.read_text(errors="ignore")
        found += [f"{path.relative_to(ROOT)}: {name}" for name in NOT_IN_REPO if re.search(rf"\b{name}", text)]
        if SHARED in text and path != ROOT / ".ci" / "run":  # CI alone may use the snapshot beside the checkout
            found.append(f"{path.relative_to(ROOT)}: {SHARED}")
    assert not found, "\n".join(found)


def test_readme_fits_on_a_page_and_ci_runs_its_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    command = re.search(r"^(python -m pytest[^\n#]*?)\s*#", readme, flags=re.MULTILINE)
    assert command, "the README names no test command"
    assert "-rs" in command.group(1), "the test command must show skip reasons"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command.group(1).strip() in [line.strip() for line in ci]
