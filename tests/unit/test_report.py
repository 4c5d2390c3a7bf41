"""``duet-plugin report`` (duet_plugin.report): hand-written run folders -> table values, missing values kept
missing, the Pareto front against a brute-force check, non-empty PNGs, legible plots (no overlapping labels, a
robustness grid of at most two columns, everything inside its axes), and no silent overwrite."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pytest

from duet_plugin import report as rpt
from duet_plugin.cli import main as cli_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def attack(unattacked: float, by_variant: dict[str, float], worst: str, **extra: object) -> dict:
    """An attack metric's EVAL entry in the plugin's format (attack.py), re-measuring forget_Q_A_ROUGE."""
    return {
        "agg_value": by_variant[worst],
        "worst_of": "forget_Q_A_ROUGE",
        "worst_variant": worst,
        "unattacked": {"forget_Q_A_ROUGE": unattacked, "forget_Q_A_Prob": 0.5},
        "value_by_attack": {v: {"forget_Q_A_ROUGE": x, "forget_Q_A_Prob": 0.6} for v, x in by_variant.items()},
        "attack_info": {v: {"example_input": "q"} for v in by_variant},
        "refusal_by_attack": {v: {"forget_Q_A_ROUGE": 0.1} for v in by_variant},
        **extra,
    }


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    """Four TOFU forget05 runs and one WMDP run, laid out as scripts/reproduce_*.py and OU write them."""
    hydra = "forget_split: forget05\nholdout_split: holdout05\nmodel:\n  x: ${forget_split}\n"
    base = {"forget_quality": 0.2, "forget_Q_A_Prob": 0.4, "forget_truth_ratio": 0.6, "privleak": -10.0}

    duet = tmp_path / "tofu_m_forget05_DUET"
    write(duet / "evals" / "TOFU_SUMMARY.json", {**base, "forget_Q_A_ROUGE": 0.30, "model_utility": 0.85})
    write(duet / "evals" / ".hydra" / "config.yaml", hydra)
    robust_summary = {**base, "forget_Q_A_ROUGE": 0.31, "model_utility": 0.84, "relearn_attack": 1.0}
    robust_summary |= {"prompt_attack": 0.04, "prefill_attack": 0.87, "quantization_attack": 0.3, "over_refusal": 0.02}
    write(duet / "evals_robustness" / "TOFU_SUMMARY.json", robust_summary)
    eval_logs = {
        "forget_Q_A_ROUGE": {"agg_value": 0.31, "value_by_index": {"0": {"generation": "I do not know"}}},
        "relearn_attack": attack(0.3, {"lr0.0001": 0.9, "lr0.001": 1.0}, "lr0.001", recovery=0.75),
        "prompt_attack": attack(0.3, {"reverse_prompt": 0.0, "paraphrase": 0.04}, "paraphrase"),
        "prefill_attack": attack(0.3, {"k2": 0.87, "k4": 0.5}, "k2"),
        "quantization_attack": attack(0.3, {"int8": 0.3, "int4": 0.3}, "int8"),
    }
    write(duet / "evals_robustness" / "TOFU_EVAL.json", eval_logs)
    # OU's in-training evaluation: never read.
    write(duet / "checkpoint-5" / "TOFU_SUMMARY.json", {"forget_Q_A_ROUGE": 0.99, "model_utility": 0.01})

    npo = tmp_path / "tofu_m_forget05_NPO"  # no robustness eval, no forget_quality (no retain logs)
    summary = {k: v for k, v in base.items() if k != "forget_quality"}
    write(npo / "evals" / "TOFU_SUMMARY.json", {**summary, "forget_Q_A_ROUGE": 0.0, "model_utility": 0.75})
    write(npo / "evals" / ".hydra" / "config.yaml", hydra)

    ga = tmp_path / "tofu_m_forget05_GradAscent"  # a true zero utility
    write(ga / "evals" / "TOFU_SUMMARY.json", {**base, "forget_Q_A_ROUGE": 0.0, "model_utility": 0.0})
    write(ga / "evals" / ".hydra" / "config.yaml", hydra)

    partial = tmp_path / "tofu_m_forget05_SimNPO"  # the summary at the run folder itself, no utility
    write(partial / "TOFU_SUMMARY.json", {"forget_Q_A_ROUGE": 0.1})
    write(partial / ".hydra" / "config.yaml", hydra)

    wmdp = tmp_path / "wmdp_z_cyber_RMU"
    lm = {"wmdp_cyber/acc": 0.30, "wmdp_cyber/acc_stderr": 0.01, "mmlu/acc": 0.55}
    lm |= {"int8/wmdp_cyber/acc": 0.31, "int4/wmdp_cyber/acc": 0.35, "relearn_lr1e-05/wmdp_cyber/acc": 0.45}
    lm |= {"relearn_lr0.0001/wmdp_cyber/acc": 0.52, "int4/mmlu/acc": 0.50, "worst/wmdp_cyber/acc": 0.52}
    lm |= {"worst/mmlu/acc": 0.45}
    write(wmdp / "evals_robustness" / "LMEval_SUMMARY.json", lm)
    write(wmdp / "evals_robustness" / ".hydra" / "config.yaml", "data_split: cyber\n")
    return {"DUET": duet, "NPO": npo, "GradAscent": ga, "SimNPO": partial, "RMU": wmdp}


def make_report(runs: dict[str, Path], out: Path, *extra: str) -> int:
    return cli_main(["report", *(str(p) for p in runs.values()), "-o", str(out), *extra])


def md_table(text: str, heading: str) -> dict[str, dict[str, str]]:
    """The markdown table under ``## heading`` as {run: {column: cell}}."""
    block = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head, cells, strict=True))
    return rows


def test_table_values_and_missing_values(runs, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "report"
    assert make_report(runs, out) == 0
    rows = {r["run"]: r for r in csv.DictReader((out / "results.csv").open())}
    duet, npo, ga, partial = (rows[p.name] for p in list(runs.values())[:4])
    # OU's plain eval wins over the robustness eval's copy of the same metric; checkpoints are ignored.
    assert float(duet["forget_Q_A_ROUGE"]) == 0.30 and float(duet["model_utility"]) == 0.85
    assert float(duet["relearn_attack"]) == 1.0 and float(duet["relearn_attack/recovery"]) == 0.75
    assert float(duet["relearn_attack/unattacked"]) == 0.3 and duet["relearn_attack/worst_variant"] == "lr0.001"
    assert float(duet["prefill_attack/k4"]) == 0.5
    assert (duet["benchmark"], duet["setting"]) == ("tofu", "forget05")
    # Missing stays missing (empty), a real zero stays zero.
    assert npo["forget_quality"] == "" and npo["relearn_attack"] == "" and npo["relearn_attack/recovery"] == ""
    assert ga["model_utility"] == "0.0" and ga["forget_Q_A_ROUGE"] == "0.0"
    assert partial["model_utility"] == "" and float(partial["forget_Q_A_ROUGE"]) == 0.1
    assert rows["wmdp_z_cyber_RMU"]["forget_Q_A_ROUGE"] == ""
    assert float(rows["wmdp_z_cyber_RMU"]["int4/wmdp_cyber/acc"]) == 0.35

    md = (out / "results.md").read_text()
    tofu = md_table(md, "TOFU forget05")
    assert set(tofu) == {p.name for p in list(runs.values())[:4]}
    assert tofu[npo["run"]]["forget_quality ↑"] == "n/a" and tofu[npo["run"]]["relearn_attack ↓"] == "n/a"
    assert tofu[ga["run"]]["model_utility ↑"] == "0.000"
    assert tofu[duet["run"]]["forget_Q_A_ROUGE ↓"] == "0.300"
    # OU's forget_truth_ratio (closer_to_1_better aggregate): higher is better.
    assert tofu[duet["run"]]["forget_truth_ratio ↑"] == "0.600"
    # OU's TOFU columns are shown even when no run of the group has them.
    only_npo = md_table(rpt.render_markdown([rpt.load_run("n", runs["NPO"])]), "TOFU forget05")
    assert only_npo["n"]["forget_quality ↑"] == "n/a"
    assert "prefill_attack/k4" not in md  # per-variant details are in the CSV only
    wmdp = md_table(md, "WMDP cyber")
    assert wmdp["wmdp_z_cyber_RMU"]["wmdp_cyber/acc"] == "0.300"
    assert wmdp["wmdp_z_cyber_RMU"]["worst/wmdp_cyber/acc"] == "0.520"
    assert "acc_stderr" not in md.split("## WMDP cyber", 1)[1]


def test_pareto_column_per_group(runs, tmp_path) -> None:
    loaded = rpt.load_runs([str(p) for p in runs.values()])
    md = md_table(rpt.render_markdown(loaded), "TOFU forget05")
    # (forget ROUGE, utility): DUET (0.30, 0.85), NPO (0.0, 0.75), GradAscent (0.0, 0.0), SimNPO (0.1, missing).
    marks = {name.rsplit("_", 1)[1]: row["Pareto"] for name, row in md.items()}
    assert marks == {"DUET": "yes", "NPO": "yes", "GradAscent": "", "SimNPO": "n/a"}
    custom = rpt.Axes("forget_Q_A_Prob", "model_utility", x_lower_is_better=False)
    front, missing = rpt.group_front(rpt.groups(loaded)["TOFU forget05"], custom)
    assert missing == ["tofu_m_forget05_SimNPO"] and front == {"tofu_m_forget05_DUET"}  # ties on x: best y wins


def brute_force_front(points: dict[str, tuple[float, float]], x_lower: bool, y_higher: bool) -> set[str]:
    def better_or_equal(a: tuple[float, float], b: tuple[float, float]) -> bool:
        x_ok = a[0] <= b[0] if x_lower else a[0] >= b[0]
        y_ok = a[1] >= b[1] if y_higher else a[1] <= b[1]
        return x_ok and y_ok

    return {
        p for p, a in points.items() if not any(better_or_equal(b, a) and b != a for q, b in points.items() if q != p)
    }


def test_pareto_front_matches_brute_force() -> None:
    rng = random.Random(0)
    for trial in range(400):
        n = rng.randint(0, 12)
        grid = rng.choice([3, 5, 100])  # small grids force ties on x, on y and whole duplicates
        points = {f"p{i}": (rng.randint(0, grid) / grid, rng.randint(0, grid) / grid) for i in range(n)}
        x_lower, y_higher = rng.choice([True, False]), rng.choice([True, False])
        expected = brute_force_front(points, x_lower, y_higher)
        assert rpt.pareto_front(points, x_lower, y_higher) == expected, (trial, points, x_lower, y_higher)
    assert rpt.pareto_front({"a": (0.0, 1.0), "b": (0.0, 1.0), "c": (0.5, 1.0)}) == {"a", "b"}


def test_default_axes_per_benchmark(runs) -> None:
    assert rpt.default_axes("tofu", []) == rpt.Axes("forget_Q_A_ROUGE", "model_utility")
    assert rpt.default_axes("muse", []) == rpt.Axes("forget_knowmem_ROUGE", "retain_knowmem_ROUGE")
    wmdp = rpt.load_run("RMU", runs["RMU"])
    assert wmdp.benchmark == "wmdp" and wmdp.group == "WMDP cyber"
    assert rpt.default_axes("wmdp", wmdp.summary) == rpt.Axes("wmdp_cyber/acc", "mmlu/acc")
    assert rpt.default_axes("lm_eval", {"mmlu/acc": 0.5}) is None


def test_robustness_bars(runs) -> None:
    duet = rpt.robustness_bars(rpt.load_run("DUET", runs["DUET"]))
    assert duet["relearn_attack"] == ("forget_Q_A_ROUGE", 0.3, 1.0)
    assert duet["prompt_attack"] == ("forget_Q_A_ROUGE", 0.3, 0.04)
    npo = rpt.robustness_bars(rpt.load_run("NPO", runs["NPO"]))
    assert all(unattacked is None and worst is None for _, unattacked, worst in npo.values())
    wmdp = rpt.robustness_bars(rpt.load_run("RMU", runs["RMU"]))
    # Worst per attack over its own variants, on the forget task (higher = more came back).
    assert wmdp == {"relearn": ("wmdp_cyber/acc", 0.30, 0.52), "quantization": ("wmdp_cyber/acc", 0.30, 0.35)}


def test_pngs_are_written_and_non_empty(runs, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "report"
    assert make_report(runs, out) == 0
    for name in ("pareto.png", "robustness.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
    # Custom axes work for every group; a group without the keys still gets a panel.
    out2 = tmp_path / "custom"
    assert make_report(runs, out2, "--x", "forget_Q_A_Prob", "--y", "forget_truth_ratio", "--y-better", "lower") == 0
    assert (out2 / "pareto.png").read_bytes().startswith(PNG_MAGIC)
    assert "Pareto front over forget_Q_A_Prob (lower is better) and forget_truth_ratio (lower is better)" in (
        (out2 / "results.md").read_text()
    )


def test_refuses_to_overwrite(runs, tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "report"
    out.mkdir()
    (out / "pareto.png").write_bytes(b"mine")
    assert make_report(runs, out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "pareto.png").read_bytes() == b"mine" and not (out / "results.md").exists()
    assert make_report(runs, out, "--overwrite") == 0
    assert (out / "pareto.png").read_bytes().startswith(PNG_MAGIC) and (out / "results.md").is_file()


def test_labels_and_bad_inputs(runs, tmp_path, capsys) -> None:
    parsed = rpt.parse_run_args([f"ours={runs['DUET']}", str(runs["NPO"])])
    assert parsed == [("ours", runs["DUET"]), ("tofu_m_forget05_NPO", runs["NPO"])]
    with pytest.raises(ValueError, match="labelled 'x'"):
        rpt.parse_run_args([f"x={runs['DUET']}", f"x={runs['NPO']}"])
    with pytest.raises(ValueError, match="not a folder"):
        rpt.parse_run_args([str(tmp_path / "nope")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["report", str(empty), "-o", str(tmp_path / "r")]) == 2
    assert "no TOFU/MUSE/LMEval" in capsys.readouterr().err and not (tmp_path / "r").exists()
    broken = tmp_path / "broken"
    write(broken / "evals" / "TOFU_SUMMARY.json", '{"forget_Q_A_ROUGE": 0.')
    assert cli_main(["report", str(broken), "-o", str(tmp_path / "r")]) == 2
    assert "TOFU_SUMMARY.json is not valid JSON" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert cli_main(["report", str(runs["DUET"]), "-o", str(tmp_path / "r"), "--x", "a"]) == 2
    assert "--x and --y go together" in capsys.readouterr().err


def test_run_without_results_is_a_row_of_missing_values(runs, tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    empty = tmp_path / "tofu_m_forget05_crashed"
    empty.mkdir()
    assert cli_main(["report", str(runs["DUET"]), str(empty), "-o", str(tmp_path / "r")]) == 0
    assert "crashed: no *_SUMMARY.json found" in capsys.readouterr().err
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO((tmp_path / "r" / "results.csv").read_text()))}
    crashed = rows["tofu_m_forget05_crashed"]
    assert crashed["benchmark"] == "" and crashed["model_utility"] == "" and crashed["pareto_front"] == ""
    assert md_table((tmp_path / "r" / "results.md").read_text(), "no results")["tofu_m_forget05_crashed"]["Pareto"] == (
        "n/a"
    )


def test_short_labels() -> None:
    names = ["tofu_L_forget05_GradDiff", "tofu_L_forget05_UNDO-DUET", "tofu_L_forget05_original"]
    assert rpt.short_labels(names) == ["GradDiff", "UNDO-DUET", "original"]
    assert rpt.short_labels(["a_b", "a"]) == ["a_b", "a"]


def boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def inside(inner, outer, slack: float = 0.5) -> bool:
    return (
        inner.x0 >= outer.x0 - slack
        and inner.x1 <= outer.x1 + slack
        and inner.y0 >= outer.y0 - slack
        and inner.y1 <= outer.y1 + slack
    )


def tofu_grid(tmp_path: Path, points: dict[str, tuple[float, float] | None]) -> list[rpt.Run]:
    """TOFU forget05 runs at (forget_Q_A_ROUGE, model_utility); None: a run without robustness or utility."""
    out = []
    for name, point in points.items():
        folder = tmp_path / name
        summary = (
            {"forget_Q_A_ROUGE": 0.5} if point is None else {"forget_Q_A_ROUGE": point[0], "model_utility": point[1]}
        )
        write(folder / "evals" / "TOFU_SUMMARY.json", summary)
        write(folder / "evals" / ".hydra" / "config.yaml", "forget_split: forget05\n")
        if point is not None:
            rob = {"forget_Q_A_ROUGE": point[0], "relearn_attack": 1.0, "prompt_attack": 0.0, "prefill_attack": 0.4}
            write(folder / "evals_robustness" / "TOFU_SUMMARY.json", rob)  # no quantization_attack: n/a
        out.append(rpt.load_run(name, folder))
    return out


# The demo grid's crowded corner (NPO over IdkDPO, WGA over SimNPO), runs sharing one point, and a missing one.
CLOSE_POINTS = {
    "original": (1.0, 0.915),
    "SatImp": (1.0, 0.801),
    "NPO": (0.0, 0.748),
    "IdkDPO": (0.0, 0.730),
    "WGA": (0.128, 0.822),
    "SimNPO": (0.129, 0.807),
    "BiDistill": (0.084, 0.707),
    "DUET": (0.300, 0.847),
    "RMU": (0.404, 0.911),
    "UNDIAL": (0.418, 0.827),
    "GradAscent": (0.0, 0.0),
    "GradDiff": (0.0, 0.0),
    "CEU": (0.0, 0.0),
    "retain-only": None,
}


def test_place_labels_avoids_collisions() -> None:
    anchors = [(100.0, 100.0), (100.0, 103.0), (104.0, 100.0), (300.0, 100.0)]
    sizes = [(40.0, 12.0)] * 4
    legend = (90.0, 60.0, 160.0, 85.0)
    bounds = (0.0, 0.0, 320.0, 200.0)  # the last point's labels would leave them on the right
    spots = rpt.place_labels(anchors, sizes, [legend], bounds, px_per_pt=1.0)
    boxes = [rpt.spot_box(a, s, spot, 1.0) for a, s, spot in zip(anchors, sizes, spots, strict=True)]
    for i, a in enumerate(boxes):
        assert rpt._overlap(a, legend) == 0 and rpt._overlap(a, bounds) == pytest.approx(40 * 12), a
        assert all(rpt._overlap(a, b) == 0 for b in boxes[i + 1 :]), (a, boxes)
    assert spots[0] == rpt.label_spots()[0]  # a free point keeps the default spot (upper right)


def test_pareto_labels_do_not_overlap(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    fig = rpt.pareto_figure(tofu_grid(tmp_path, CLOSE_POINTS))
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts if not t.get_text().startswith("missing")}
    # One label per point: runs at the same point share it; the missing run has none.
    assert set(labels) == {n for n, p in CLOSE_POINTS.items() if p and p != (0.0, 0.0)} | {"GradAscent, GradDiff, CEU"}
    assert "retain-only" in " ".join(t.get_text() for t in ax.texts)  # named in the "missing" note
    items = list(labels.items())
    for i, (name, box) in enumerate(items):
        assert inside(box, ax.get_window_extent(renderer)), name
        for other, other_box in items[i + 1 :]:
            assert not boxes_overlap(box, other_box), (name, other)
        for point in {p for p in CLOSE_POINTS.values() if p}:  # no label hides a marker
            x, y = ax.transData.transform(point)
            assert not (box.x0 < x < box.x1 and box.y0 < y < box.y1), (name, point)
    legend = ax.get_legend().get_window_extent(renderer)
    assert not any(boxes_overlap(box, legend) for box in labels.values())
    rpt._pyplot().close(fig)


def test_robustness_figure_is_a_narrow_grid(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    runs = tofu_grid(tmp_path, CLOSE_POINTS)
    fig = rpt.robustness_figure(runs)
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    assert fig.get_figwidth() * rpt.DPI <= 1100  # readable at page width
    panels = fig.axes
    assert len(panels) == 4 and len({round(ax.get_position().x0, 3) for ax in panels}) <= 2
    n_missing = 0
    for ax in panels:
        frame = ax.get_window_extent(renderer)
        assert ax.texts
        for text in ax.texts:  # bar values and "n/a" markers: legible, and inside the panel
            assert text.get_fontsize() >= 8 and inside(text.get_window_extent(renderer), frame), text.get_text()
        na = [t for t in ax.texts if t.get_text().strip() == rpt.MISSING_MD]
        n_missing += len(na)
        # A missing value is an "n/a", never a bar: one bar per value present.
        bars = [p for p in ax.patches if p.get_width() != 0 or p.get_height() != 0]
        assert len(bars) + len(na) == 2 * len(runs)
    # retain-only lacks everything (4 attacks x 2 bars), every other run both quantization bars (no attack details).
    assert n_missing == 4 * 2 + 2 * (len(runs) - 1)
    rpt._pyplot().close(fig)


def test_robustness_bars_read_a_named_forget_task(tmp_path) -> None:
    """A local forget task not named wmdp* (the CPU demo's stand-in) is charted when named, e.g. by --x."""
    run_dir = tmp_path / "wmdp_demo_cyber_DUET"
    lm = {"demo_forget_mcq/acc": 0.9, "demo_general_mcq/acc": 0.8, "int4/demo_forget_mcq/acc": 1.0}
    lm |= {"relearn_lr0.001/demo_forget_mcq/acc": 0.95, "relearn_lr0.001/demo_general_mcq/acc": 0.99}
    (run_dir / "evals").mkdir(parents=True)
    (run_dir / "evals" / "LMEval_SUMMARY.json").write_text(json.dumps(lm))
    run = rpt.load_run("DUET", run_dir)
    assert all(worst is None for _, _, worst in rpt.robustness_bars(run).values())  # no wmdp* task: nothing found
    named = rpt.robustness_bars(run, "demo_forget_mcq/acc")
    assert named == {"relearn": ("demo_forget_mcq/acc", 0.9, 0.95), "quantization": ("demo_forget_mcq/acc", 0.9, 1.0)}


def test_lm_eval_quantization_worst_case_includes_bitsandbytes_variants(tmp_path) -> None:
    """nf4/fp4 variants (lm_eval_plan names them without an int prefix) count for the quantization worst case."""
    run_dir = tmp_path / "wmdp_z_cyber_DUET"
    lm = {"wmdp_cyber/acc": 0.3, "int8/wmdp_cyber/acc": 0.31, "nf4/wmdp_cyber/acc": 0.6, "fp4/wmdp_cyber/acc": 0.4}
    (run_dir / "evals").mkdir(parents=True)
    (run_dir / "evals" / "LMEval_SUMMARY.json").write_text(json.dumps(lm))
    bars = rpt.robustness_bars(rpt.load_run("DUET", run_dir))
    assert bars["quantization"] == ("wmdp_cyber/acc", 0.3, 0.6)


def test_probe_families_are_drawn_when_the_prompt_attack_reports_them(runs, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "report"
    assert make_report(runs, out) == 0
    assert not (out / rpt.FAMILIES_OUTPUT).exists()  # no run reports per family
    logs_path = runs["DUET"] / "evals_robustness" / "TOFU_EVAL.json"
    logs = json.loads(logs_path.read_text())
    by_family = {"prefix_injection": {"forget_Q_A_ROUGE": 0.0}, "synonym_manipulation": {"forget_Q_A_ROUGE": 0.04}}
    logs["prompt_attack"]["value_by_family"] = by_family
    write(logs_path, logs)
    loaded = rpt.load_runs([f"DUET={runs['DUET']}", f"NPO={runs['NPO']}"])
    metric, families, table = rpt.probe_families(loaded)
    assert metric == "forget_Q_A_ROUGE" and families == ["prefix_injection", "synonym_manipulation"]
    assert table == {"DUET": {"none": 0.3, "prefix_injection": 0.0, "synonym_manipulation": 0.04}}  # NPO has none
    out2 = tmp_path / "report2"
    assert make_report(runs, out2) == 0
    data = (out2 / rpt.FAMILIES_OUTPUT).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000
