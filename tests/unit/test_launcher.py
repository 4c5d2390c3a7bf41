"""The fallback launcher and the CLI, without an OU checkout: root discovery and its errors."""

from __future__ import annotations

import pytest

from duet_plugin.cli import main
from duet_plugin.openunlearning.launcher import OURootNotFound, find_ou_root, run


def _fake_root(path):
    (path / "src").mkdir(parents=True)
    (path / "configs").mkdir()
    (path / "src" / "train.py").write_text("")
    (path / "configs" / "unlearn.yaml").write_text("")
    return path


def test_explicit_root_then_env_then_cwd(tmp_path, monkeypatch) -> None:
    a, b, c = (_fake_root(tmp_path / n) for n in "abc")
    monkeypatch.setenv("OU_ROOT", str(b))
    monkeypatch.chdir(c)
    assert find_ou_root(a) == a.resolve()
    assert find_ou_root() == b.resolve()
    monkeypatch.delenv("OU_ROOT")
    assert find_ou_root() == c.resolve()


def test_a_wrong_explicit_root_is_an_error_not_a_fallback(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(_fake_root(tmp_path / "good"))
    with pytest.raises(OURootNotFound, match=r"--ou-root=.*missing.*pass --ou-root PATH, set OU_ROOT"):
        find_ou_root(tmp_path / "missing")
    monkeypatch.setenv("OU_ROOT", str(tmp_path / "nope"))
    with pytest.raises(OURootNotFound, match=r"\$OU_ROOT="):
        find_ou_root()


def test_unknown_command(tmp_path) -> None:
    with pytest.raises(ValueError, match="Unknown command"):
        run("finetune", [], ou_root=_fake_root(tmp_path / "ou"))


def test_cli_reports_a_missing_root(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("OU_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "experiment=unlearn/tofu/duet"]) == 2
    assert "No OpenUnlearning checkout found" in capsys.readouterr().err
