"""``duet-plugin demo --model``: the settings a pretrained model gets, and the errors for a folder it cannot use,
raised before anything is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from duet_plugin.demo.pipeline import SMOLLM2, DemoModelError, DemoSettings, check_model_folder


def test_pretrained_profiles_are_smaller_and_gentler_than_the_tiny_models() -> None:
    tiny = DemoSettings.profile_settings("default")
    for profile in ("quick", "default", "full"):
        s = DemoSettings.profile_settings(profile, SMOLLM2)
        assert s.pretrained and s.model == SMOLLM2 and s.profile == profile
        assert s.n_authors < tiny.n_authors and s.finetune_lr < tiny.finetune_lr and s.unlearn_lr < tiny.unlearn_lr
        assert s.recovery_steps < tiny.recovery_steps
    steps = [DemoSettings.profile_settings(p, SMOLLM2).finetune_steps for p in ("quick", "default", "full")]
    assert steps == sorted(steps) and len(set(steps)) == 3
    assert not tiny.pretrained and tiny.model_label == "the tiny Llama"
    assert DemoSettings.profile_settings("default", "/models/my-llm").model_label == "my-llm"
    with pytest.raises(ValueError, match="Unknown demo profile"):
        DemoSettings.pretrained_settings("fast")


def _folder(tmp_path: Path, template: str | None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template} if template else {}))
    return folder


def test_a_model_folder_needs_a_config_and_a_chat_template(tmp_path) -> None:
    with pytest.raises(DemoModelError, match=r"config\.json is missing"):
        check_model_folder(tmp_path / "nowhere")
    with pytest.raises(DemoModelError, match=r"no chat template.*tokenizer\.chat_template"):
        check_model_folder(_folder(tmp_path, None))
    check_model_folder(_folder(tmp_path / "ok", "{{ messages }}"))  # passes


@pytest.mark.parametrize("template", [None, "missing"])
def test_the_cli_refuses_an_unusable_model_before_writing_anything(tmp_path, template) -> None:
    model = _folder(tmp_path, None) if template is None else tmp_path / "missing"
    workdir = tmp_path / "demo"
    cmd = [sys.executable, "-m", "duet_plugin.cli", "demo", "--model", str(model), "--workdir", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    why = "config.json is missing" if template else "no chat template"
    assert f"duet-plugin demo: --model {model}" in proc.stderr and why in proc.stderr
    assert not workdir.exists()
