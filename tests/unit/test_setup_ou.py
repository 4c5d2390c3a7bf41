"""``duet-plugin setup-ou`` against stand-in OpenUnlearning repositories made here: where the checkout comes from,
how it is verified and recorded, and that every failure names its fix and leaves the user's files alone.

The pinned commit and tree are monkeypatched to the stand-in's; ``tests/integration/test_setup_ou_ou.py`` checks
the real pins against the real snapshot."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from duet_plugin.cli import main
from duet_plugin.openunlearning import setup_ou as so
from duet_plugin.openunlearning.launcher import find_ou_root


def _git(*args: str, cwd: Path) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **env}, check=True, capture_output=True, text=True
    ).stdout.strip()


def _write_ou(root: Path, version: str) -> None:
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "configs").mkdir(exist_ok=True)
    (root / "src" / "train.py").write_text(f"print('ou {version}')\n")
    (root / "configs" / "unlearn.yaml").write_text("defaults: []\n")
    (root / ".gitignore").write_text("saves/\n")


@pytest.fixture
def upstream(tmp_path, monkeypatch) -> Path:
    """A stand-in OU repository with two commits; the first is pinned."""
    repo = tmp_path / "upstream"
    repo.mkdir()
    _git("init", "--quiet", cwd=repo)
    _write_ou(repo, "pinned")
    _git("add", "-A", cwd=repo)
    _git("commit", "--quiet", "-m", "pinned", cwd=repo)
    pinned, tree = _git("rev-parse", "HEAD", cwd=repo), _git("rev-parse", "HEAD^{tree}", cwd=repo)
    _write_ou(repo, "later")
    _git("commit", "--quiet", "-am", "later", cwd=repo)
    monkeypatch.setattr(so, "OU_COMMIT", pinned)
    monkeypatch.setattr(so, "OU_TREE", tree)
    monkeypatch.setattr(so, "SHORT", pinned[:7])
    return repo


def _quiet(*_: object) -> None:
    pass


def test_clones_the_pinned_commit_records_it_and_reuses_it(upstream, tmp_path, monkeypatch) -> None:
    dest = so.setup_ou(tmp_path / "ou", str(upstream), say=_quiet)
    assert (dest / "src" / "train.py").read_text() == "print('ou pinned')\n"
    assert so.commit_of(dest) == so.OU_COMMIT
    assert so.recorded_ou_root() == dest
    monkeypatch.delenv("OU_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert find_ou_root() == dest
    said = []
    assert so.setup_ou(dest, str(upstream), say=said.append) == dest
    assert any("already in" in s for s in said)
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_a_bare_mirror_works_as_source(upstream, tmp_path) -> None:
    mirror = tmp_path / "mirror.git"
    _git("clone", "--quiet", "--mirror", str(upstream), str(mirror), cwd=tmp_path)
    dest = so.setup_ou(tmp_path / "ou", str(mirror), say=_quiet)
    assert so.commit_of(dest) == so.OU_COMMIT


def test_an_exported_copy_is_verified_file_by_file(upstream, tmp_path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    subprocess.run(f"git archive {so.OU_COMMIT} | tar -x -C {export}", shell=True, cwd=upstream, check=True)
    (export / "saves").mkdir()
    (export / "saves" / "big.bin").write_text("ignored by OU's .gitignore: neither checked nor copied")
    dest = so.setup_ou(tmp_path / "ou", str(export), say=_quiet)
    assert so.commit_of(dest) == so.OU_COMMIT and not (dest / "saves").exists()
    (export / "src" / "train.py").write_text("print('edited')\n")
    with pytest.raises(so.SetupError, match=r"not those of commit .*pass --from a clone or mirror"):
        so.setup_ou(tmp_path / "ou2", str(export), say=_quiet)
    assert not (tmp_path / "ou2").exists()


def test_an_existing_folder_is_never_overwritten(upstream, tmp_path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(so.SetupError, match=r"exists and is not an OpenUnlearning checkout; choose another --dir"):
        so.setup_ou(mine, str(upstream), say=_quiet)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    other = tmp_path / "other"
    _git("clone", "--quiet", str(upstream), str(other), cwd=tmp_path)  # at the later commit
    with pytest.raises(so.SetupError, match=r"holds OpenUnlearning at [0-9a-f]{7}, not .*git -C .* checkout"):
        so.setup_ou(other, str(upstream), say=_quiet)
    assert (other / "src" / "train.py").read_text() == "print('ou later')\n"
    assert so.recorded_ou_root() is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert so.setup_ou(empty, str(upstream), say=_quiet) == empty.resolve()


def test_failures_name_their_fix_and_leave_nothing_behind(upstream, tmp_path, monkeypatch) -> None:
    cases = {
        "https://127.0.0.1:9/open-unlearning.git": r"could not reach .*Without network.*setup-ou --from PATH",
        str(tmp_path / "upstream" / "src"): r"is not an OpenUnlearning checkout or mirror",
    }
    for source, message in cases.items():
        with pytest.raises(so.SetupError, match=message):
            so.setup_ou(tmp_path / "ou", source, say=_quiet)
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    _git("init", "--quiet", cwd=unrelated)
    (unrelated / "x").write_text("x")
    _git("add", "x", cwd=unrelated)
    _git("commit", "--quiet", "-m", "x", cwd=unrelated)
    with pytest.raises(so.SetupError, match=r"has no commit .*full history"):
        so.setup_ou(tmp_path / "ou", str(unrelated), say=_quiet)
    monkeypatch.setattr(so.shutil, "which", lambda name: None)
    with pytest.raises(so.SetupError, match=r"git is not installed.*install git"):
        so.setup_ou(tmp_path / "ou", str(upstream), say=_quiet)
    assert not (tmp_path / "ou").exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert so.recorded_ou_root() is None


def test_the_command_sets_up_checks_and_says_so(upstream, tmp_path, monkeypatch, capsys) -> None:
    from duet_plugin.openunlearning import doctor

    seen = []
    monkeypatch.setattr(doctor, "diagnose", lambda root: seen.append(root) or [doctor.Check("x", "ok", "fine")])
    assert main(["setup-ou", "--dir", str(tmp_path / "ou"), "--from", str(upstream)]) == 0
    out = capsys.readouterr().out
    assert f"Cloning OpenUnlearning {so.SHORT}" in out and "Recorded" in out and "[ok  ] x: fine" in out
    assert seen == [str((tmp_path / "ou").resolve())]
    assert main(["setup-ou", "--dir", str(tmp_path / "mine-too"), "--from", str(tmp_path / "nowhere")]) == 2
    assert "duet-plugin setup-ou: git clone" in capsys.readouterr().err


def test_demo_sets_up_the_framework_when_none_is_found(tmp_path, monkeypatch, capsys) -> None:
    from duet_plugin.demo import pipeline

    monkeypatch.delenv("OU_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_setup(dest=None, source=None, say=print):
        calls.append((dest, source))
        raise so.SetupError("could not reach https://github.com/locuslab/open-unlearning (offline)")

    monkeypatch.setattr(so, "setup_ou", fake_setup)
    monkeypatch.setattr(pipeline.Demo, "run", lambda self: pytest.fail("the demo must not start"))
    assert main(["demo", "--workdir", str(tmp_path / "d")]) == 1
    captured = capsys.readouterr()
    assert "No OpenUnlearning checkout found: setting one up in" in captured.out
    assert "could not reach" in captured.err and calls == [(None, None)]
    # an explicit wrong root is reported, never replaced by a set-up
    assert main(["demo", "--ou-root", str(tmp_path / "bad"), "--workdir", str(tmp_path / "d")]) == 1
    assert "is not an OpenUnlearning checkout" in capsys.readouterr().err and len(calls) == 1
