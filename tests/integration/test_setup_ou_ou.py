"""``duet-plugin setup-ou`` from the real OpenUnlearning snapshot: the pinned commit and tree identify it, the copy
is verified and recorded, and doctor then knows the commit."""

from __future__ import annotations

import pytest

from duet_plugin.openunlearning import doctor
from duet_plugin.openunlearning import setup_ou as so
from duet_plugin.openunlearning.launcher import find_ou_root

pytestmark = pytest.mark.ou


def test_the_snapshot_is_the_pinned_commit(ou_root) -> None:
    assert so.commit_of(ou_root) == so.OU_COMMIT


def test_setup_from_the_snapshot_is_found_and_known_to_doctor(ou_root, tmp_path, monkeypatch) -> None:
    dest = so.setup_ou(tmp_path / "ou", str(ou_root), say=lambda *_: None)
    assert so.commit_of(dest) == so.OU_COMMIT
    assert (dest / "src" / "train.py").read_bytes() == (ou_root / "src" / "train.py").read_bytes()
    monkeypatch.delenv("OU_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert find_ou_root() == dest
    checks = {c.name: c for c in doctor.check_ou(None)}
    assert checks["OpenUnlearning"].detail == str(dest)
    assert checks["OU commit"].status == "ok" and checks["OU commit"].detail.startswith(so.SHORT)
