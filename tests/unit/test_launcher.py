"""The fallback launcher and the CLI, without an OU checkout: root discovery, the checks made before OU starts,
and their errors."""

from __future__ import annotations

import pytest

from duet_plugin.cli import main
from duet_plugin.openunlearning import launcher
from duet_plugin.openunlearning.launcher import LaunchError, OURootNotFound, find_ou_root, preflight, run
from duet_plugin.openunlearning.setup_ou import record_ou_root


def _fake_root(path):
    (path / "src").mkdir(parents=True)
    (path / "configs").mkdir()
    (path / "src" / "train.py").write_text("")
    (path / "configs" / "unlearn.yaml").write_text("")
    return path


def test_explicit_root_then_env_then_cwd_then_recorded(tmp_path, monkeypatch) -> None:
    a, b, c, d = (_fake_root(tmp_path / n) for n in "abcd")
    record_ou_root(d)
    monkeypatch.setenv("OU_ROOT", str(b))
    monkeypatch.chdir(c)
    assert find_ou_root(a) == a.resolve()
    assert find_ou_root() == b.resolve()
    monkeypatch.delenv("OU_ROOT")
    assert find_ou_root() == c.resolve()
    monkeypatch.chdir(tmp_path)
    assert find_ou_root() == d.resolve()


def test_a_wrong_explicit_root_is_an_error_not_a_fallback(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(_fake_root(tmp_path / "good"))
    with pytest.raises(OURootNotFound, match=r"--ou-root=.*missing is not an OpenUnlearning checkout.*Point --ou-root"):
        find_ou_root(tmp_path / "missing")
    monkeypatch.setenv("OU_ROOT", str(tmp_path / "nope"))
    with pytest.raises(OURootNotFound, match=r"OU_ROOT=.*nope is not an OpenUnlearning checkout"):
        find_ou_root()


def test_a_recorded_checkout_that_is_gone_says_to_set_up_again(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("OU_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    record_ou_root(tmp_path / "deleted")
    with pytest.raises(OURootNotFound, match=r"recorded in .*config.json.*deleted.*is gone.*duet-plugin setup-ou"):
        find_ou_root()


def test_unknown_command(tmp_path) -> None:
    with pytest.raises(ValueError, match="Unknown command"):
        run("finetune", [], ou_root=_fake_root(tmp_path / "ou"))


def test_cli_reports_a_missing_root(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("OU_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "experiment=unlearn/tofu/duet"]) == 2
    err = capsys.readouterr().err
    assert "No OpenUnlearning checkout found" in err and "duet-plugin setup-ou" in err


def _ou_with_experiments(root):
    _fake_root(root)
    for name in ("unlearn/tofu/default", "unlearn/muse/default", "finetune/tofu/default"):
        (root / "configs" / "experiment" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "configs" / "experiment" / f"{name}.yaml").write_text("")
    return root


def test_a_misspelled_experiment_is_answered_with_the_closest_names(tmp_path) -> None:
    root = _ou_with_experiments(tmp_path / "ou")
    with pytest.raises(
        LaunchError, match=r"experiment=unlearn/tofu/duett does not exist.*Closest: unlearn/tofu/duet\b"
    ):
        preflight(root, ["--config-name=unlearn.yaml", "experiment=unlearn/tofu/duett"])
    with pytest.raises(LaunchError, match=r"Closest: .*unlearn/tofu/default"):
        preflight(root, ["experiment=unlearn/tofu/defualt"])
    # OU's own experiments and the plugin's (unlearn/tofu/duet) pass, and so does one from the user's own config
    # folders, which only Hydra can see
    preflight(root, ["experiment=unlearn/tofu/default", "+experiment=unlearn/tofu/duet.yaml"])
    preflight(root, ["hydra.searchpath=[file:///my/configs]", "experiment=mine/special"])


def test_a_missing_model_folder_is_caught_before_ou_starts(tmp_path, monkeypatch, capsys) -> None:
    root = _ou_with_experiments(tmp_path / "ou")
    monkeypatch.chdir(tmp_path)
    imported = []
    monkeypatch.setattr(launcher, "import_framework", lambda r: imported.append(r))
    bad = "model.model_args.pretrained_model_name_or_path=saves/finetune/nope"
    assert main(["train", "--ou-root", str(root), "experiment=unlearn/tofu/default", bad]) == 2
    err = capsys.readouterr().err
    assert "saves/finetune/nope: no such folder (relative to" in err and imported == []
    with pytest.raises(LaunchError, match="no such folder"):
        preflight(root, [f"trainer.method_args.teacher={tmp_path / 'gone'}"])
    (tmp_path / "saves" / "finetune" / "here").mkdir(parents=True)
    # an existing folder, a Hub id (org/name) and an interpolation are left to OU
    preflight(
        root,
        [
            "model.model_args.pretrained_model_name_or_path=saves/finetune/here",
            "model.tokenizer_args.pretrained_model_name_or_path=meta-llama/Llama-3.2-1B-Instruct",
            "trainer.method_args.teacher=${paths.output_dir}",
        ],
    )
