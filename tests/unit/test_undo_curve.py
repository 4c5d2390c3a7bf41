"""scripts/undo_curve.py's pure parts: the compute fraction, the concept size of a split, reading the held-out
relearning result, the table, the verdict and the plot, on fake OU eval JSONs (no OU run)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from duet_plugin.demo.fictitious_authors import build_dataset

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "undo_curve.py"


@pytest.fixture(scope="module")
def uc():
    spec = importlib.util.spec_from_file_location("undo_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["undo_curve"] = module  # dataclasses look their module up while the script is executed
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("undo_curve", None)


STEPS = [0, 5, 10]


def _result(rouge: dict[str, list[float]], prob: dict[str, list[float]] | None = None) -> dict:
    """A relearn_heldout result as OU's eval writes it: curve[key][lr] with steps and seed means."""

    def curves(by_lr):
        return {lr: {"steps": STEPS, "mean": means, "std": [0.0] * len(means)} for lr, means in by_lr.items()}

    prob = prob or {lr: [m / 2 for m in means] for lr, means in rouge.items()}
    first = next(iter(rouge.values()))[0]
    return {
        "agg_value": max(m for means in rouge.values() for m in means[1:]),
        "unattacked": {"forget_Q_A_ROUGE": first, "forget_Q_A_Prob": first / 2},
        "curve": {"forget_Q_A_ROUGE": curves(rouge), "forget_Q_A_Prob": curves(prob)},
        "settings": {"learning_rates": [0.0001, 0.001], "seeds": [0], "eval_at_steps": STEPS, "batch_size": 8},
    }


def _write_eval(folder: Path, result: dict, utility: float = 0.8) -> Path:
    folder.mkdir(parents=True)
    path = folder / "TOFU_EVAL.json"
    path.write_text(json.dumps({"relearn_heldout": result, "forget_Q_A_ROUGE": {"agg_value": result["agg_value"]}}))
    (folder / "TOFU_SUMMARY.json").write_text(
        json.dumps({"forget_Q_A_ROUGE": 0.2, "model_utility": utility, "relearn_heldout": result["agg_value"]})
    )
    return path


def test_compute_fraction_counts_examples(uc) -> None:
    assert uc.compute_fraction(150, 32, 600, 32) == pytest.approx(0.25)
    assert uc.compute_fraction(400, 16, 600, 32) == pytest.approx(1 / 3)
    assert uc.compute_fraction(0, 32, 600, 32) == 0.0
    with pytest.raises(ValueError):
        uc.compute_fraction(10, 32, 0, 32)
    with pytest.raises(ValueError):
        uc.compute_fraction(-1, 32, 600, 32)


def test_concept_size_reads_author_blocks(uc) -> None:
    rows = [{"author": a} for a in "AAAAABBBBB"]
    assert uc.concept_size(rows) == 5
    with pytest.raises(ValueError, match="contiguous"):
        uc.concept_size([{"author": a} for a in "AABBA"])  # A comes back: blocks would mix authors
    with pytest.raises(ValueError, match="contiguous"):
        uc.concept_size([{"author": a} for a in "AAABB"])  # unequal blocks
    with pytest.raises(ValueError):
        uc.concept_size([])


def test_concept_size_of_the_demo_forget_split(uc) -> None:
    dataset = build_dataset(n_authors=40, qa_per_author=5, seed=0)
    assert uc.concept_size(dataset.configs["forget05"]) == 5  # two authors of five questions


def test_relearned_takes_the_attackers_best_point_after_step_0(uc) -> None:
    result = _result({"lr0.0001": [0.9, 0.2, 0.3], "lr0.001": [0.9, 0.5, 0.4]})
    worst = uc.relearned(result, "forget_Q_A_ROUGE")
    assert worst == {"value": 0.5, "lr": "lr0.001", "step": 5, "unattacked": 0.9}  # step 0 (0.9) is not an attack
    assert worst["value"] == result["agg_value"]  # as relearn_attack's own agg_value for its first child
    assert uc.relearned(result, "forget_Q_A_ROUGE", 10)["value"] == 0.4
    assert uc.relearned(result, "forget_Q_A_ROUGE", 10)["lr"] == "lr0.001"
    assert uc.relearned(result, "forget_Q_A_Prob")["value"] == 0.25
    assert uc.relearned(result, "forget_Truth_Ratio") is None
    assert uc.relearned({}, "forget_Q_A_ROUGE") is None
    nan = _result({"lr0.001": [0.1, float("nan"), 0.3]})
    assert uc.relearned(nan, "forget_Q_A_ROUGE")["value"] == 0.3


def _sweep(tmp_path: Path, uc, undo: dict[tuple[float, int], float], oracle=0.2, teacher=1.0, skip=()) -> list:
    evals = tmp_path / "evals"
    runs = []
    for kind, value in (("oracle", oracle), ("teacher", teacher)):
        path = evals / kind / "TOFU_EVAL.json"
        _write_eval(path.parent, _result({"lr0.001": [0.0, value, value - 0.05]}))
        runs.append(uc.Run(kind, kind, path))
    for (alpha, steps), value in undo.items():
        path = evals / f"a{alpha}_s{steps}" / "TOFU_EVAL.json"
        if (alpha, steps) not in skip:
            _write_eval(path.parent, _result({"lr0.001": [0.1, value, value - 0.05]}), utility=0.7)
        runs.append(uc.Run(f"a{alpha} s{steps}", "undo", path, alpha, steps, uc.compute_fraction(steps, 32, 600, 32)))
    return runs


def test_table_rows_csv_and_markdown(uc, tmp_path) -> None:
    runs = _sweep(tmp_path, uc, {(0.25, 50): 0.9, (0.25, 300): 0.6, (0.9, 50): 0.8}, skip={(0.9, 50)})
    rows = uc.table_rows(runs)
    assert [r["label"] for r in rows] == ["oracle", "teacher", "a0.25 s50", "a0.25 s300"]  # missing eval left out
    row = rows[3]
    assert row["kind"] == "undo" and row["alpha"] == 0.25 and row["undo_steps"] == 300
    assert row["compute_fraction"] == pytest.approx(0.5)
    assert row["heldout_ROUGE_relearned"] == 0.6 and row["heldout_ROUGE_before"] == 0.1
    assert row["heldout_Prob_relearned"] == pytest.approx(0.3)
    assert row["heldout_ROUGE_at"] == "lr0.001 step 5"
    assert row["model_utility"] == 0.7 and row["forget_ROUGE"] == 0.2
    at_10 = uc.table_rows(runs, at=10)
    assert at_10[3]["heldout_ROUGE_relearned"] == pytest.approx(0.55)

    uc.write_csv(rows, tmp_path / "t.csv")
    with (tmp_path / "t.csv").open() as f:
        back = list(csv.DictReader(f))
    assert len(back) == 4 and float(back[3]["heldout_ROUGE_relearned"]) == 0.6
    md = uc.render_markdown(rows)
    assert md.splitlines()[0].startswith("| label | kind | alpha |") and "| a0.25 s300 | undo | 0.250 | 300 |" in md
    assert uc.render_markdown([]) == "(no evaluated model yet)"


def test_curves_by_alpha_sorted_by_compute(uc, tmp_path) -> None:
    runs = _sweep(tmp_path, uc, {(0.9, 400): 0.3, (0.25, 50): 0.9, (0.9, 50): 0.8})
    curves = uc.curves_by_alpha(uc.table_rows(runs), "heldout_ROUGE_relearned")
    assert list(curves) == [0.25, 0.9]
    assert curves[0.9] == [(pytest.approx(50 / 600), 0.8), (pytest.approx(400 / 600), 0.3)]


def test_verdict_reproduced_partly_or_not(uc, tmp_path) -> None:
    col = "heldout_ROUGE_relearned"
    falling = _sweep(tmp_path / "a", uc, {(0.25, 50): 0.9, (0.25, 400): 0.5, (0.9, 50): 0.8, (0.9, 400): 0.4})
    text = uc.verdict(uc.table_rows(falling), col)
    assert text.endswith("Reproduced: held-out relearning falls with compute, towards the oracle.")
    assert "alpha 0.9: 0.800 (8%) -> 0.400 (67%), 75% of the teacher-oracle gap closed" in text
    mixed = _sweep(tmp_path / "b", uc, {(0.25, 50): 0.9, (0.25, 400): 0.95, (0.9, 50): 0.8, (0.9, 400): 0.7})
    assert "Partly reproduced" in uc.verdict(uc.table_rows(mixed), col)
    flat = _sweep(tmp_path / "c", uc, {(0.25, 50): 0.9, (0.25, 400): 0.91})
    assert "Not reproduced" in uc.verdict(uc.table_rows(flat), col)
    rising = _sweep(tmp_path / "f", uc, {(0.9, 50): 0.2, (0.9, 400): 0.4})  # at the oracle, then away from it
    assert "Not reproduced" in uc.verdict(uc.table_rows(rising), col)
    no_gap = _sweep(tmp_path / "d", uc, {(0.25, 50): 0.3, (0.25, 400): 0.2}, oracle=0.5, teacher=0.5)
    assert "Not testable" in uc.verdict(uc.table_rows(no_gap), col)
    assert uc.verdict([], col).startswith("incomplete")
    one = _sweep(tmp_path / "e", uc, {(0.25, 50): 0.5, (0.9, 50): 0.3})
    assert uc.verdict(uc.table_rows(one), col).endswith("No trend yet: one compute point per alpha.")


def test_plot_writes_a_png(uc, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    runs = _sweep(tmp_path, uc, {(0.25, 50): 0.9, (0.25, 400): 0.5, (0.9, 50): 0.8})
    path = uc.plot_curve(uc.table_rows(runs), tmp_path / "curve.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_checks(uc, tmp_path) -> None:
    settings = {"learning_rates": [0.0001, 0.001], "seeds": [0], "eval_at_steps": STEPS, "batch_size": 8}
    path = _write_eval(tmp_path / "e", _result({"lr0.001": [0.1, 0.2, 0.3]}))
    assert uc.eval_done(path, settings)
    assert not uc.eval_done(path, {**settings, "seeds": [0, 1]})  # other attack settings: run again
    assert not uc.eval_done(tmp_path / "missing" / "TOFU_EVAL.json", settings)
    model = tmp_path / "m"
    model.mkdir()
    assert not uc.undo_done(model, 50)
    (model / "model.safetensors").write_bytes(b"x")
    (model / "trainer_state.json").write_text(json.dumps({"global_step": 50}))
    assert uc.undo_done(model, 50) and not uc.undo_done(model, 150)
