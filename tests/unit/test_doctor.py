"""``duet-plugin doctor``'s advice, without an OU checkout: every failure names a fix that can work."""

from __future__ import annotations

from duet_plugin.openunlearning import doctor


def test_a_wrong_root_is_named_and_the_fix_is_not_to_pass_it_again(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("OU_ROOT", raising=False)
    (check,) = doctor.check_ou(str(tmp_path / "bad"))
    assert check.status == "fail"
    assert f"--ou-root={tmp_path / 'bad'} is not an OpenUnlearning checkout" in check.detail
    assert "setup-ou" in check.fix and "pass --ou-root PATH" not in check.fix
    monkeypatch.chdir(tmp_path)
    (check,) = doctor.check_ou(None)
    assert "No OpenUnlearning checkout found" in check.detail and "duet-plugin setup-ou" in check.fix


def test_a_missing_package_gets_an_installable_pin(monkeypatch) -> None:
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda dist: None if dist in ("deepspeed", "peft") else real(dist))
    checks = {c.name: c for c in doctor.check_packages()}
    pins = doctor.ou_cpu_pins()
    assert checks["deepspeed"].status == "fail" and checks["peft"].status == "warn"
    assert checks["deepspeed"].fix.startswith(f'pip install "deepspeed{pins["deepspeed"]}"')
    assert pins["deepspeed"].startswith("==") and pins["peft"] == "==0.17.1"
    assert all("duet-plugin[" not in c.fix for c in checks.values())  # not on PyPI: that command cannot work
