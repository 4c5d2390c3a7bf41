"""scripts/loss_terms.py reads the plugin trainers' terms from a train.py log, whatever surrounds the lines."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("loss_terms", ROOT / "scripts" / "loss_terms.py")
loss_terms = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loss_terms)

LOG = """python src/train.py ...
  3%|▎         | 1/30 [00:05<02:30,  5.2s/it]{'loss': 2.5, 'grad_norm': 40.0, 'learning_rate': 3e-05, \
'bidistill/scale_forget_push': 2.0, 'bidistill/forget_push': 2.0, 'bidistill/retain_pull': 0.5, 'epoch': 0.33}
  7%|▋         | 2/30 [00:10<02:20,  5.0s/it]{'loss': 1.5, 'grad_norm': 20.0, 'learning_rate': 2.9e-05, \
'bidistill/scale_forget_push': 2.0, 'bidistill/forget_push': 1.0, 'bidistill/retain_pull': 0.25, 'epoch': 0.67}
{'train_runtime': 60.0, 'train_loss': 2.0, 'epoch': 1.0}
"""


def test_terms_are_read_per_logged_step_with_scales_last(tmp_path) -> None:
    log = tmp_path / "reproduce_train.log"
    log.write_text(LOG)
    rows = loss_terms.read_terms(log)
    assert [r["step"] for r in rows] == [1, 2] and [r["bidistill/forget_push"] for r in rows] == [2.0, 1.0]
    assert loss_terms.term_keys(rows) == [
        "bidistill/forget_push",
        "bidistill/retain_pull",
        "bidistill/scale_forget_push",
    ]
    table = loss_terms.markdown(rows, logging_steps=5).splitlines()
    assert table[0] == "| step | loss | grad_norm | forget_push | retain_pull | scale_forget_push |"
    assert table[3] == "| 10 | 1.5 | 20 | 1 | 0.25 | 2 |"


def test_a_log_without_terms_is_an_error(tmp_path, capsys) -> None:
    log = tmp_path / "finetune.log"
    log.write_text("{'loss': 1.0, 'grad_norm': 2.0, 'epoch': 1.0}\n")
    assert loss_terms.main([str(log)]) == 1
    assert "no log line with a plugin trainer's terms" in capsys.readouterr().err


def test_shares_weigh_and_scale_each_term_with_the_runs_weights(tmp_path) -> None:
    """A term's share of the loss is weight x term / scale over the sum; the weights come from the run's Hydra
    config (BiDistill's stream_weights merged over the defaults, times w_pull/w_push), else 1."""
    rows = loss_terms.read_terms(_write(tmp_path / "reproduce_train.log", LOG))
    plain = loss_terms.shares(rows)
    assert plain[0]["forget_push"] == pytest.approx(1.0 / 1.5) and plain[1]["retain_pull"] == pytest.approx(0.25 / 0.75)
    assert loss_terms.run_weights(tmp_path) is None
    hydra = tmp_path / ".hydra"
    hydra.mkdir()
    (hydra / "config.yaml").write_text(
        "trainer:\n  method_args:\n    w_push: 2.0\n    stream_weights:\n      retain: {pull: 3.0}\n"
    )
    weights = loss_terms.run_weights(tmp_path)
    assert weights["forget_push"] == 2.0 and weights["retain_pull"] == 3.0 and weights["retain_push"] == 0.0
    weighted = loss_terms.shares(rows, weights)  # step 1: push 2 x 2 / 2 = 2, retain 3 x 0.5 = 1.5
    assert weighted[0]["forget_push"] == pytest.approx(2 / 3.5) and weighted[0]["retain_pull"] == pytest.approx(
        1.5 / 3.5
    )
    assert loss_terms.main([str(tmp_path / "reproduce_train.log")]) == 0


def _write(path, text):
    path.write_text(text)
    return path
