"""``duet-plugin doctor`` against a real OU checkout: every plugin component must end up in OU's registries."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ou


def test_doctor_finds_every_component_registered(ou_imported) -> None:
    from duet_plugin.openunlearning.doctor import check_ou
    from duet_plugin.openunlearning.registration import _components

    checks = {c.name: c for c in check_ou(str(ou_imported))}
    assert checks["OpenUnlearning"].status == "ok"
    registration = checks["registration"]
    n = sum(len(entries) for _, _, entries in _components())
    assert registration.status == "ok", registration.detail
    assert f"all {n} plugin components are in OU's registries" in registration.detail


def test_doctor_names_the_fix_for_a_folder_that_is_not_ou(tmp_path) -> None:
    from duet_plugin.openunlearning.doctor import check_ou

    (check,) = check_ou(str(tmp_path))
    assert check.status == "fail" and "--ou-root" in check.fix
