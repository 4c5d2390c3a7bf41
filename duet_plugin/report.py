"""``duet-plugin report``: one table and two plots from the evaluation outputs of several runs (and
``relearn_curves.png`` when a relearning attack was measured at several steps, ``eval_at_steps``, with the
retain-only reference dashed where given; ``probe_families.png`` when the prompt attack reported per probe family).

Each run folder is searched (itself and its direct subfolders; ``checkpoint-*`` folders, i.e. OU's in-training
evaluations, are skipped) for OU's ``TOFU_SUMMARY.json`` / ``MUSE_SUMMARY.json`` / ``LMEval_SUMMARY.json``. Several
summaries of one run (``evals/`` and ``evals_robustness/`` of ``scripts/reproduce_*.py``) are merged: the run folder
first, then its subfolders by name; a key keeps the first value found. The robustness details (each attack's
unattacked value, worst variant, per-variant values and the relearning recovery) come from the ``*_EVAL.json`` next
to a TOFU/MUSE summary; for lm-eval runs from the ``<variant>/<key>`` entries of ``LMEval_SUMMARY.json``.

A value that a run did not produce stays missing: an empty CSV cell, "n/a" in markdown, no point or bar in a plot.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from duet_plugin.core.attacks.quantization import BNB_SCHEMES

SUMMARY_SUFFIX = "_SUMMARY.json"
#: Evaluator name (the file prefix) -> benchmark, in the order a run's benchmark is decided.
EVALUATOR_BENCHMARKS = {"TOFU": "tofu", "MUSE": "muse", "LMEval": "lm_eval"}
#: The attack metrics of eval/{tofu,muse}/robustness (OU metrics whose EVAL entry has value_by_attack).
ATTACK_METRICS = ("relearn_attack", "prompt_attack", "prefill_attack", "quantization_attack")
#: lm-eval attack variants by name prefix(es) (see duet_plugin.core.attacks.lm_eval_plan: int<bits>, nf4, fp4).
LM_EVAL_ATTACKS = {"relearn": ("relearn_lr",), "quantization": ("int", *BNB_SCHEMES)}
WORST = "worst"
#: The forget metric each attack re-measures first when its EVAL details are absent.
DEFAULT_FORGET_KEY = {"tofu": "forget_Q_A_ROUGE", "muse": "forget_knowmem_ROUGE"}
#: Markdown column order (keys not listed follow, sorted); arrows say which direction is better.
KNOWN_COLUMNS = {
    "forget_quality": "↑",
    "forget_Q_A_Prob": "↓",
    "forget_Q_A_ROUGE": "↓",
    "forget_truth_ratio": "↑",  # OU's closer_to_1_better: 1 = true and perturbed answers equally likely
    "forget_knowmem_ROUGE": "↓",
    "forget_verbmem_ROUGE": "↓",
    "retain_knowmem_ROUGE": "↑",
    "model_utility": "↑",
    "privleak": "",
    "extraction_strength": "↓",
    "relearn_attack": "↓",
    "relearn_attack/recovery": "↓",
    "prompt_attack": "↓",
    "prefill_attack": "↓",
    "quantization_attack": "↓",
    "over_refusal": "↓",
    "performance_shift": "↑",
}
#: OU's summary keys per benchmark: always shown in the markdown table, "n/a" when a run lacks them.
OU_COLUMNS = {
    "tofu": (
        "forget_quality",
        "forget_Q_A_Prob",
        "forget_Q_A_ROUGE",
        "forget_truth_ratio",
        "model_utility",
        "privleak",
        "extraction_strength",
    ),
    "muse": ("forget_knowmem_ROUGE", "forget_verbmem_ROUGE", "retain_knowmem_ROUGE", "privleak", "extraction_strength"),
}
_WMDP_ACC = re.compile(r"^wmdp_[A-Za-z0-9_]+/acc$")
MISSING_MD = "n/a"


@dataclass
class Run:
    """One run's merged summary and robustness details."""

    label: str
    path: Path
    benchmark: str | None = None
    setting: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)

    @property
    def group(self) -> str:
        """Runs are compared within a group: one benchmark and one split (forget05, News, cyber)."""
        if self.benchmark is None:
            return "no results"
        return self.benchmark.upper() + (f" {self.setting}" if self.setting else "")


# -- reading -------------------------------------------------------------------------------------------------


def parse_run_args(items: Sequence[str]) -> list[tuple[str, Path]]:
    """``PATH`` or ``LABEL=PATH`` -> (label, path); the label defaults to the folder's name. Raises ``ValueError``
    for a missing folder or a label used twice."""
    out: list[tuple[str, Path]] = []
    for item in items:
        path = Path(item)
        if not path.exists() and "=" in item:
            label, _, raw = item.partition("=")
            path = Path(raw)
        else:
            label = path.resolve().name
        if not path.is_dir():
            raise ValueError(f"{path} is not a folder (give each run's output folder, or LABEL=FOLDER).")
        out.append((label, path))
    seen: dict[str, Path] = {}
    for label, path in out:
        if label in seen:
            raise ValueError(
                f"Two runs are labelled {label!r} ({seen[label]} and {path}); name them with LABEL=FOLDER."
            )
        seen[label] = path
    return out


def summary_files(run_dir: Path) -> list[Path]:
    """``*_SUMMARY.json`` in ``run_dir`` and its direct subfolders (not ``checkpoint-*``), the folder first."""
    own = sorted(run_dir.glob(f"*{SUMMARY_SUFFIX}"))
    subs = sorted(p for p in run_dir.glob(f"*/*{SUMMARY_SUFFIX}") if not p.parent.name.startswith("checkpoint-"))
    return [p for p in own + subs if p.name[: -len(SUMMARY_SUFFIX)] in EVALUATOR_BENCHMARKS]


def _setting(folder: Path, benchmark: str) -> str | None:
    """The split from the evaluation's Hydra config (``.hydra/config.yaml``), if OU wrote one."""
    cfg = folder / ".hydra" / "config.yaml"
    if not cfg.is_file():
        return None
    try:
        data = yaml.safe_load(cfg.read_text()) or {}
    except yaml.YAMLError:
        return None
    value = data.get("forget_split" if benchmark == "tofu" else "data_split")
    return value if isinstance(value, str) and not value.startswith("${") else None


def _attack_details(entry: Mapping[str, Any]) -> dict[str, Any]:
    """What the report keeps of an attack metric's EVAL entry (not the per-example logs)."""
    keep = (
        "agg_value", "worst_of", "worst_variant", "unattacked", "value_by_attack", "recovery", "curve", "reference",
        "value_by_family",
    )  # fmt: skip
    return {k: entry[k] for k in keep if k in entry}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); was its evaluation interrupted?") from err


def load_run(label: str, path: Path) -> Run:
    """Read and merge a run's summaries (see the module docstring)."""
    run = Run(label, path)
    for file in summary_files(path):
        evaluator = file.name[: -len(SUMMARY_SUFFIX)]
        summary = _read_json(file)
        if not isinstance(summary, dict):
            raise ValueError(f"{file} does not hold a JSON object of metric values.")
        benchmark = EVALUATOR_BENCHMARKS[evaluator]
        if benchmark == "lm_eval" and any(k.startswith("wmdp") for k in summary):
            benchmark = "wmdp"
        if run.benchmark is None:
            run.benchmark = benchmark
        if benchmark != run.benchmark:
            continue  # another benchmark's evaluation in the same folder: not merged into this row
        run.sources.append(file)
        run.setting = run.setting or _setting(file.parent, benchmark)
        for key, value in summary.items():
            if run.summary.get(key) is None:
                run.summary[key] = value
        details = file.with_name(f"{evaluator}_EVAL.json")
        if evaluator != "LMEval" and details.is_file():  # LMEval_EVAL.json holds every lm-eval sample: not read
            logs = _read_json(details)
            for name, entry in logs.items():
                if isinstance(entry, Mapping) and "value_by_attack" in entry and name not in run.attacks:
                    run.attacks[name] = _attack_details(entry)
    return run


def load_runs(items: Sequence[str]) -> list[Run]:
    return [load_run(label, path) for label, path in parse_run_args(items)]


# -- values --------------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A plottable number, or None (missing, non-numeric or NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def derived_values(run: Run) -> dict[str, Any]:
    """The robustness columns beyond the summary: per attack its unattacked value, worst variant, recovery and
    each variant's value (of the metric the worst case is taken over)."""
    out: dict[str, Any] = {}
    for name, d in run.attacks.items():
        key = d.get("worst_of")
        out[f"{name}/unattacked"] = (d.get("unattacked") or {}).get(key)
        out[f"{name}/worst_variant"] = d.get("worst_variant")
        if "recovery" in d:
            out[f"{name}/recovery"] = d["recovery"]
        for variant, values in (d.get("value_by_attack") or {}).items():
            out[f"{name}/{variant}"] = (values or {}).get(key)
    return out


def values(run: Run) -> dict[str, Any]:
    return {**run.summary, **derived_values(run)}


def _is_detail_key(key: str) -> bool:
    """Keys shown in the CSV only: lm-eval stderr and per-variant entries, attack details other than recovery."""
    if key.endswith("_stderr"):
        return True
    parts = key.split("/")
    if len(parts) == 3 and parts[0] != WORST:  # <variant>/<task>/<metric>
        return True
    return len(parts) == 2 and parts[0] in ATTACK_METRICS and parts[1] != "recovery"


def ordered_keys(keys: Iterable[str]) -> list[str]:
    keys = set(keys)
    known = [k for k in KNOWN_COLUMNS if k in keys]
    return known + sorted(keys - set(known), key=lambda k: (k.startswith(WORST + "/"), k))


# -- Pareto front --------------------------------------------------------------------------------------------


def pareto_front(
    points: Mapping[str, tuple[float, float]], x_lower_is_better: bool = True, y_higher_is_better: bool = True
) -> set[str]:
    """Labels of the points no other point dominates (at least as good on both axes, better on one).

    Sweep: with both axes turned into "smaller is better", sort by x; a point is on the front when its y is
    strictly below every y seen at a strictly smaller x and it is the smallest y at its own x (ties all stay)."""
    norm = {
        label: (x if x_lower_is_better else -x, -y if y_higher_is_better else y) for label, (x, y) in points.items()
    }
    front: set[str] = set()
    best = math.inf
    by_x: dict[float, list[str]] = {}
    for label, (x, _) in norm.items():
        by_x.setdefault(x, []).append(label)
    for x in sorted(by_x):
        group = by_x[x]
        lowest = min(norm[label][1] for label in group)
        if lowest < best:
            front.update(label for label in group if norm[label][1] == lowest)
            best = lowest
    return front


@dataclass(frozen=True)
class Axes:
    x: str
    y: str
    x_lower_is_better: bool = True
    y_higher_is_better: bool = True


def default_axes(benchmark: str | None, keys: Iterable[str]) -> Axes | None:
    """TOFU: forget ROUGE vs model utility; MUSE: forget vs retain knowmem ROUGE; WMDP: wmdp vs mmlu accuracy."""
    if benchmark == "tofu":
        return Axes("forget_Q_A_ROUGE", "model_utility")
    if benchmark == "muse":
        return Axes("forget_knowmem_ROUGE", "retain_knowmem_ROUGE")
    if benchmark == "wmdp":
        wmdp = sorted(k for k in keys if _WMDP_ACC.match(k))
        return Axes(wmdp[0], "mmlu/acc") if wmdp else None
    return None


def groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for run in runs:
        out.setdefault(run.group, []).append(run)
    return out


def group_axes(group: Sequence[Run], axes: Axes | None) -> Axes | None:
    if axes is not None:
        return axes
    keys = {k for r in group for k in r.summary}
    return default_axes(group[0].benchmark, keys)


def group_front(group: Sequence[Run], axes: Axes | None) -> tuple[set[str], list[str]]:
    """(Pareto-front labels, labels with a missing coordinate) of one group."""
    if axes is None:
        return set(), [r.label for r in group]
    points, missing = {}, []
    for run in group:
        v = values(run)
        x, y = _number(v.get(axes.x)), _number(v.get(axes.y))
        if x is None or y is None:
            missing.append(run.label)
        else:
            points[run.label] = (x, y)
    return pareto_front(points, axes.x_lower_is_better, axes.y_higher_is_better), missing


# -- robustness ----------------------------------------------------------------------------------------------


def robustness_bars(
    run: Run, forget_key: str | None = None
) -> dict[str, tuple[str | None, float | None, float | None]]:
    """Per attack: (metric, unattacked value, worst value over the attack's variants); None where missing. lm-eval
    runs use ``forget_key`` (e.g. the Pareto ``--x``) as the forget task's metric, else the first ``wmdp*/acc``."""
    if run.benchmark in ("wmdp", "lm_eval"):
        keys = [k for k in run.summary if k.count("/") == 1 and not k.endswith("_stderr")]
        forget = sorted(k for k in keys if _WMDP_ACC.match(k)) or sorted(k for k in keys if k.startswith("wmdp"))
        metric = forget_key if forget_key in keys else (forget[0] if forget else None)
        out = {}
        for attack, prefix in LM_EVAL_ATTACKS.items():
            found = [
                _number(v)
                for k, v in run.summary.items()
                if metric and k.endswith("/" + metric) and k.split("/")[0].startswith(prefix) and k.count("/") == 2
            ]
            found = [f for f in found if f is not None]
            worst = max(found) if found else None  # a forget task: the higher the score, the more came back
            out[attack] = (metric, _number(run.summary.get(metric)) if metric else None, worst)
        return out
    out = {}
    for attack in ATTACK_METRICS:
        d = run.attacks.get(attack)
        if d is not None:
            key = d.get("worst_of")
            out[attack] = (key, _number((d.get("unattacked") or {}).get(key)), _number(d.get("agg_value")))
        else:
            key = DEFAULT_FORGET_KEY.get(run.benchmark or "")
            worst = _number(run.summary.get(attack))
            unattacked = _number(run.summary.get(key)) if key and worst is not None else None
            out[attack] = (key, unattacked, worst)
    return out


# -- tables --------------------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    """Markdown cell: "n/a" for missing, 3 decimals (scientific below 1e-3), text as is."""
    if value is None:
        return MISSING_MD
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.3f}"
    return str(value).replace("|", "\\|")


def render_markdown(runs: Sequence[Run], axes: Axes | None = None) -> str:
    """One table per group (benchmark and split); the Pareto column uses the group's plot axes."""
    parts = ["# Results", ""]
    for name, group in groups(runs).items():
        ax = group_axes(group, axes)
        front, missing = group_front(group, ax)
        shown = {k for r in group for k in values(r) if not _is_detail_key(k)}
        keys = ordered_keys(shown | set(OU_COLUMNS.get(group[0].benchmark or "", ())))
        head = ["run", *(f"{k} {KNOWN_COLUMNS[k]}".strip() if k in KNOWN_COLUMNS else k for k in keys), "Pareto"]
        lines = [f"## {name}", ""]
        if ax is not None:
            lines += [
                f"Pareto front over {ax.x} ({_better(ax.x_lower_is_better)}) and {ax.y} "
                f"({_better(not ax.y_higher_is_better)}).",
                "",
            ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for run in group:
            v = values(run)
            mark = MISSING_MD if run.label in missing else ("yes" if run.label in front else "")
            lines.append("| " + " | ".join([run.label, *(fmt(v.get(k)) for k in keys), mark]) + " |")
        parts += [*lines, ""]
    parts.append("n/a: the run did not produce this value. Source files: see results.csv (column `sources`).")
    return "\n".join(parts) + "\n"


def _better(lower: bool) -> str:
    return "lower is better" if lower else "higher is better"


def render_csv(runs: Sequence[Run], axes: Axes | None = None) -> str:
    """Every value of every run (details included); a missing value is an empty cell."""
    fronts: dict[str, str] = {}
    for group in groups(runs).values():
        front, missing = group_front(group, group_axes(group, axes))
        for run in group:
            fronts[run.label] = "" if run.label in missing else str(run.label in front).lower()
    keys = ordered_keys(
        {k for r in runs for k in values(r)} | {k for r in runs for k in OU_COLUMNS.get(r.benchmark or "", ())}
    )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", "benchmark", "setting", "pareto_front", *keys, "path", "sources"])
    for run in runs:
        v = values(run)
        cells = [_csv_cell(v.get(k)) for k in keys]
        sources = ";".join(str(s) for s in run.sources)
        writer.writerow(
            [run.label, run.benchmark or "", run.setting or "", fronts[run.label], *cells, run.path, sources]
        )
    return buf.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


# -- plots ---------------------------------------------------------------------------------------------------


def short_labels(labels: Sequence[str]) -> list[str]:
    """Labels without their common ``_``-separated prefix (``tofu_Llama_forget05_GradDiff`` -> ``GradDiff``)."""
    if len(labels) < 2:
        return list(labels)
    split = [label.split("_") for label in labels]
    common = 0
    while all(len(s) > common + 1 for s in split) and len({s[common] for s in split}) == 1:
        common += 1
    return ["_".join(s[common:]) for s in split]


def _grid(n: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


#: Figure resolution: the PNGs are written at it, and label placement measures text at it.
DPI = 120
#: A box in display pixels: (x0, y0, x1, y1).
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class LabelSpot:
    """Where a point's label goes: an offset in points from the point and the text's alignment there."""

    dx: float
    dy: float
    ha: str
    va: str

    @property
    def far(self) -> bool:
        """Far enough from its point to need a leader line."""
        return max(abs(self.dx), abs(self.dy)) > 8


def label_spots(radii: Sequence[float] = (4, 12, 22, 36, 54)) -> list[LabelSpot]:
    """Candidate label spots, nearest first: at each radius the four diagonals (upper right first), then above,
    below, right and left."""
    out = []
    for r in radii:
        out += [
            LabelSpot(r, r, "left", "bottom"),
            LabelSpot(r, -r, "left", "top"),
            LabelSpot(-r, r, "right", "bottom"),
            LabelSpot(-r, -r, "right", "top"),
            LabelSpot(0, r + 2, "center", "bottom"),
            LabelSpot(0, -r - 2, "center", "top"),
            LabelSpot(r + 2, 0, "left", "center"),
            LabelSpot(-r - 2, 0, "right", "center"),
        ]
    return out


def _overlap(a: Box, b: Box) -> float:
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def spot_box(anchor: tuple[float, float], size: tuple[float, float], spot: LabelSpot, px_per_pt: float) -> Box:
    """The box (pixels) of a label of ``size`` (pixels) put at ``spot`` of the point at ``anchor`` (pixels)."""
    (x, y), (w, h) = anchor, size
    x, y = x + spot.dx * px_per_pt, y + spot.dy * px_per_pt
    x0 = {"left": x, "right": x - w, "center": x - w / 2}[spot.ha]
    y0 = {"bottom": y, "top": y - h, "center": y - h / 2}[spot.va]
    return x0, y0, x0 + w, y0 + h


def place_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    obstacles: Sequence[Box] = (),
    bounds: Box | None = None,
    spots: Sequence[LabelSpot] | None = None,
    px_per_pt: float = DPI / 72,
) -> list[LabelSpot]:
    """Greedy label placement in display pixels: each label in turn takes the first spot (nearest first) whose
    box overlaps no label placed before it, no obstacle (the markers, the legend) and does not leave ``bounds``;
    where every spot collides, the one with the least colliding area."""
    spots = list(spots or label_spots())
    placed: list[Box] = []
    out = []
    for anchor, size in zip(anchors, sizes, strict=True):
        best, best_cost = spots[0], math.inf
        for spot in spots:
            box = spot_box(anchor, size, spot, px_per_pt)
            cost = sum(_overlap(box, other) for other in [*placed, *obstacles])
            if bounds is not None:
                cost += (box[2] - box[0]) * (box[3] - box[1]) - _overlap(box, bounds)
            if cost < best_cost:
                best, best_cost = spot, cost
                if cost == 0:
                    break
        placed.append(spot_box(anchor, size, best, px_per_pt))
        out.append(best)
    return out


def _box(bbox: Any, pad: float = 0.0) -> Box:
    return bbox.x0 - pad, bbox.y0 - pad, bbox.x1 + pad, bbox.y1 + pad


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_figure(runs: Sequence[Run], axes: Axes | None = None) -> Any:
    """One panel per group: every run with both values, the Pareto front highlighted and joined. Runs at one point
    share a label; labels are placed so that they overlap neither each other, nor a marker, nor the legend."""
    plt = _pyplot()
    by_group = groups(runs)
    rows, cols = _grid(len(by_group), 3)
    fig, grid = plt.subplots(rows, cols, figsize=(6 * cols, 4.8 * rows), squeeze=False, dpi=DPI)
    labels: list[tuple[Any, dict[tuple[float, float], list[str]]]] = []
    for ax_plot, (name, group) in zip(grid.flat, by_group.items(), strict=False):
        ax = group_axes(group, axes)
        ax_plot.set_title(name)
        if ax is None:
            why = "no *_SUMMARY.json found" if group[0].benchmark is None else "no default axes: pass --x and --y"
            ax_plot.text(0.5, 0.5, why, ha="center", va="center", transform=ax_plot.transAxes)
            continue
        front, missing = group_front(group, ax)
        names = dict(zip([r.label for r in group], short_labels([r.label for r in group]), strict=True))
        pts = {r.label: (float(values(r)[ax.x]), float(values(r)[ax.y])) for r in group if r.label not in missing}
        at: dict[tuple[float, float], list[str]] = {}
        for label, (x, y) in pts.items():
            on = label in front
            ax_plot.scatter(
                [x], [y], s=70 if on else 40, marker="*" if on else "o", c="tab:red" if on else "tab:gray", zorder=3
            )
            at.setdefault((x, y), []).append(names[label])  # runs at the same point share one label
        labels.append((ax_plot, at))
        line = sorted((pts[label] for label in front), key=lambda p: (p[0], p[1]))
        if len(line) > 1:
            ax_plot.plot(*zip(*line, strict=True), c="tab:red", lw=1, ls="--", zorder=2, label="Pareto front")
            ax_plot.legend(loc="best", fontsize=8)
        ax_plot.set_xlabel(f"{ax.x} ({_better(ax.x_lower_is_better)})")
        ax_plot.set_ylabel(f"{ax.y} ({_better(not ax.y_higher_is_better)})")
        if not pts:
            ax_plot.text(0.5, 0.5, "no run has both values", ha="center", va="center", transform=ax_plot.transAxes)
        if missing:
            note = "missing, not plotted: " + ", ".join(names[m] for m in missing)
            ax_plot.text(0.0, -0.18, note, transform=ax_plot.transAxes, fontsize=7, va="top", wrap=True)
        ax_plot.margins(0.08)
    for extra in list(grid.flat)[len(by_group) :]:
        extra.axis("off")
    fig.tight_layout()
    # The layout and the limits are final from here on: place the labels in display pixels.
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    for ax_plot, at in labels:
        _label_points(ax_plot, at, renderer)
    return fig


def _label_points(ax_plot: Any, at: Mapping[tuple[float, float], list[str]], renderer: Any) -> None:
    ax_plot.set_xlim(ax_plot.get_xlim())
    ax_plot.set_ylim(ax_plot.get_ylim())
    px_per_pt = ax_plot.figure.dpi / 72
    anchors = [tuple(ax_plot.transData.transform(p)) for p in at]
    marker = 5 * px_per_pt  # half the width of a marker, with a little room
    obstacles = [(x - marker, y - marker, x + marker, y + marker) for x, y in anchors]
    legend = ax_plot.get_legend()
    if legend is not None:  # "best" would move the legend once the labels are there: pin it where it is
        box = legend.get_window_extent(renderer).transformed(ax_plot.transAxes.inverted())
        legend.remove()
        legend = ax_plot.legend(loc=(box.x0, box.y0), fontsize=8)
        obstacles.append(_box(legend.get_window_extent(renderer), 2))
    texts = [", ".join(here) for here in at.values()]
    sizes = []
    for text in texts:
        probe = ax_plot.text(0, 0, text, fontsize=8)
        ext = probe.get_window_extent(renderer)
        sizes.append((ext.width + 4, ext.height + 4))  # 2 px of room on each side
        probe.remove()
    bounds = _box(ax_plot.get_window_extent(renderer))
    spots = place_labels(anchors, sizes, obstacles, bounds, px_per_pt=px_per_pt)
    for point, text, spot in zip(at, texts, spots, strict=True):
        arrow = {"arrowstyle": "-", "color": "gray", "lw": 0.6, "shrinkA": 0, "shrinkB": 4} if spot.far else None
        ax_plot.annotate(
            text,
            point,
            textcoords="offset points",
            xytext=(spot.dx, spot.dy),
            ha=spot.ha,
            va=spot.va,
            fontsize=8,
            arrowprops=arrow,
        )


def plot_pareto(runs: Sequence[Run], path: Path, axes: Axes | None = None) -> None:
    plt = _pyplot()
    fig = pareto_figure(runs, axes)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


#: The robustness figure: at most this many attack panels side by side, this wide (inches, at DPI).
ROBUSTNESS_COLUMNS = 2
ROBUSTNESS_WIDTH = 9.0
#: Height (inches) of one run's pair of bars, and of a panel's title, axis and tick labels.
BAR_ROW_HEIGHT, PANEL_EXTRA_HEIGHT = 0.34, 1.2
#: Font size of the values printed on the bars and of the "n/a" markers.
BAR_LABEL_SIZE = 8


def robustness_figure(runs: Sequence[Run], forget_key: str | None = None) -> Any:
    """Per group and attack one panel of horizontal bars, at most ``ROBUSTNESS_COLUMNS`` panels a row: per run an
    unattacked and a worst-case bar, each with its value printed, and "n/a" where the value is missing."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    panels = [(name, group, robustness_bars_by_attack(group, forget_key)) for name, group in groups(runs).items()]
    cols = min(ROBUSTNESS_COLUMNS, max(len(attacks) for _, _, attacks in panels)) or 1
    rows = []
    for name, group, attacks in panels:
        rows += [(name, group, attacks[i : i + cols]) for i in range(0, len(attacks), cols)]
    heights = [BAR_ROW_HEIGHT * len(group) + PANEL_EXTRA_HEIGHT for _, group, _ in rows]
    legend_height = 0.4
    fig = plt.figure(figsize=(ROBUSTNESS_WIDTH, sum(heights) + legend_height), dpi=DPI)
    grid = fig.add_gridspec(len(rows), cols, height_ratios=heights)
    for row, (name, group, attacks) in enumerate(rows):
        names = short_labels([r.label for r in group])
        for col, (attack, bars) in enumerate(attacks):
            _robustness_panel(fig.add_subplot(grid[row, col]), f"{name}: {attack}", names, bars)
    handles = [Patch(color="tab:blue", label="unattacked"), Patch(color="tab:red", label="worst case")]
    fig.legend(handles=handles, loc="upper center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - legend_height / fig.get_figheight()))
    return fig


def _robustness_panel(ax: Any, title: str, names: Sequence[str], bars: Sequence[tuple[Any, Any, Any]]) -> None:
    metric = next((m for m, _, _ in bars if m), None)
    found = [v for b in bars for v in b[1:] if v is not None]
    for offset, idx, color in ((-0.2, 1, "tab:blue"), (0.2, 2, "tab:red")):
        present = [(y, b[idx]) for y, b in enumerate(bars) if b[idx] is not None]
        if present:
            drawn = ax.barh([y + offset for y, _ in present], [v for _, v in present], 0.4, color=color)
            # Every bar carries its value, so that a zero is told apart from a missing value.
            ax.bar_label(drawn, fmt="%.2f", fontsize=BAR_LABEL_SIZE, padding=2)
        for y, b in enumerate(bars):
            if b[idx] is None:  # at the bars' base, inside the axes
                ax.text(0, y + offset, " " + MISSING_MD, ha="left", va="center", fontsize=BAR_LABEL_SIZE, c="gray")
    lo, hi = min([0.0, *found]), max([0.0, *found])
    span = hi - lo
    # Room right of the longest bar (and left of a negative one) for its printed value.
    ax.set_xlim(lo - 0.22 * span if lo < 0 else 0.0, hi + 0.22 * span if span > 0 else 1.0)
    ax.set_ylim(len(bars) - 0.5, -0.5)  # the first run on top
    ax.set_yticks(range(len(bars)), names, fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(metric or "value", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def plot_robustness(runs: Sequence[Run], path: Path, forget_key: str | None = None) -> None:
    plt = _pyplot()
    fig = robustness_figure(runs, forget_key)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def robustness_bars_by_attack(
    group: Sequence[Run], forget_key: str | None = None
) -> list[tuple[str, list[tuple[str | None, Any, Any]]]]:
    """The attacks of a group (in a fixed order) with every run's (metric, unattacked, worst)."""
    per_run = [robustness_bars(r, forget_key) for r in group]
    names = list(LM_EVAL_ATTACKS) if group[0].benchmark in ("wmdp", "lm_eval") else list(ATTACK_METRICS)
    return [(a, [bars.get(a, (None, None, None)) for bars in per_run]) for a in names]


def relearn_curves(runs: Sequence[Run]) -> list[tuple[str, str, str, dict[str, Any], dict[str, Any] | None]]:
    """(run label, attack, metric, curve by lr, reference curve by lr) of every relearning attack measured at more
    than one step (``eval_at_steps``), for the metric its worst case is taken over."""
    found = []
    for run in runs:
        for name, d in run.attacks.items():
            key = d.get("worst_of")
            by_lr = (d.get("curve") or {}).get(key) or {}
            if any(len(c.get("steps") or []) > 1 for c in by_lr.values()):
                reference = ((d.get("reference") or {}).get("curve") or {}).get(key)
                found.append((run.label, name, key, by_lr, reference))
    return found


def relearn_curve_figure(runs: Sequence[Run]) -> Any:
    """One panel per run and relearning attack: the metric after each number of relearning steps, a line per
    learning rate (mean over seeds, min-max band), and the retain-only reference's mean dashed where given."""
    plt = _pyplot()
    curves = relearn_curves(runs)
    cols = min(2, len(curves)) or 1
    rows = math.ceil(len(curves) / cols) or 1
    fig, grid = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False, dpi=DPI)
    for ax, (label, name, key, by_lr, reference) in zip(grid.flat, curves, strict=False):
        for i, (lr, c) in enumerate(by_lr.items()):
            color = f"C{i}"
            points = [(s, m) for s, m in zip(c["steps"], c["mean"], strict=True) if m is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", ms=3, color=color, label=lr)
            band = [(s, lo, hi) for s, lo, hi in zip(c["steps"], c["min"], c["max"], strict=True) if lo is not None]
            if band:
                steps, lows, highs = zip(*band, strict=True)
                ax.fill_between(steps, lows, highs, color=color, alpha=0.15, lw=0)
            ref = (reference or {}).get(lr)
            if ref:
                ref_points = [(s, m) for s, m in zip(c["steps"], ref, strict=False) if m is not None]
                if ref_points:
                    ax.plot(*zip(*ref_points, strict=True), ls="--", color=color, lw=1, label=f"{lr} retain-only")
        ax.set_title(f"{label}: {name}", fontsize=10)
        ax.set_xlabel("relearning steps", fontsize=9)
        ax.set_ylabel(key or "value", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(grid.flat)[len(curves) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_relearn_curves(runs: Sequence[Run], path: Path) -> None:
    plt = _pyplot()
    fig = relearn_curve_figure(runs)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def probe_families(runs: Sequence[Run]) -> tuple[str | None, list[str], dict[str, dict[str, float | None]]]:
    """The prompt attack's per-family worst values (``value_by_family``) of every run that has them, for the metric
    its worst case is taken over: (metric, families in order of first appearance, {run: {family: value}}), and each
    run's unattacked value under ``none``."""
    metric, families, table = None, [], {}
    for run in runs:
        d = run.attacks.get("prompt_attack") or {}
        by_family = d.get("value_by_family") or {}
        if not by_family:
            continue
        metric = metric or d.get("worst_of")
        row = {"none": _number((d.get("unattacked") or {}).get(metric))}
        for family, values in by_family.items():
            if family not in families:
                families.append(family)
            row[family] = _number((values or {}).get(metric))
        table[run.label] = row
    return metric, families, table


def probe_family_figure(runs: Sequence[Run]) -> Any:
    """The forget metric per probe family (the family's worst template), a bar per run, with the unattacked value
    as the first group: which framing brings the answer back, and for whom."""
    plt = _pyplot()
    metric, families, table = probe_families(runs)
    groups_ = ["none", *families]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(groups_) * max(1, len(table)) ** 0.5 + 2), 3.8), dpi=DPI)
    width = 0.8 / max(1, len(table))
    for i, (label, row) in enumerate(table.items()):
        xs = [g + (i - (len(table) - 1) / 2) * width for g in range(len(groups_))]
        ys = [row.get(f) if row.get(f) is not None else float("nan") for f in groups_]
        ax.bar(xs, ys, width=width, label=label, color=f"C{i}")
    ax.set_xticks(range(len(groups_)))
    ax.set_xticklabels([g.replace("_", "\n") for g in groups_], fontsize=7)
    ax.set_ylabel(f"{metric or 'value'} (higher: more came back)", fontsize=9)
    ax.set_title("prompt_attack: worst template per probe family", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(4, len(table)))
    fig.tight_layout()
    return fig


def plot_probe_families(runs: Sequence[Run], path: Path) -> None:
    plt = _pyplot()
    fig = probe_family_figure(runs)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# -- entry point ---------------------------------------------------------------------------------------------

OUTPUTS = ("results.md", "results.csv", "pareto.png", "robustness.png")
#: Written besides OUTPUTS when a run has a relearning attack measured at several steps.
CURVES_OUTPUT = "relearn_curves.png"
#: Written besides OUTPUTS when a run's prompt attack reports per probe family.
FAMILIES_OUTPUT = "probe_families.png"


def write_report(runs: Sequence[Run], out_dir: Path, axes: Axes | None = None, overwrite: bool = False) -> list[Path]:
    """Write the four outputs into ``out_dir``; refuses (before writing anything) to replace existing ones unless
    ``overwrite``."""
    paths = [out_dir / name for name in OUTPUTS]
    curves = out_dir / CURVES_OUTPUT if relearn_curves(runs) else None
    families = out_dir / FAMILIES_OUTPUT if probe_families(runs)[2] else None
    paths += [p for p in (curves, families) if p is not None]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(map(str, existing))} exist; pass --overwrite to replace them.")
    out_dir.mkdir(parents=True, exist_ok=True)
    md, table, pareto, robust = paths[:4]
    md.write_text(render_markdown(runs, axes))
    table.write_text(render_csv(runs, axes))
    plot_pareto(runs, pareto, axes)
    plot_robustness(runs, robust, axes.x if axes is not None else None)
    if curves is not None:
        plot_relearn_curves(runs, curves)
    if families is not None:
        plot_probe_families(runs, families)
    return paths
