"""UNDO's compute curve on the demo: held-out-fact relearning against UNDO's distillation compute.

Run after ``duet-plugin demo --workdir DIR`` (it reuses DIR's models and data and adds its runs there):

    OMP_NUM_THREADS=1 python scripts/undo_curve.py --workdir DIR --ou-root $OU_ROOT [--alphas 0.25 0.6 0.9] \
        [--undo-steps 50 150 400] [--teacher DUET|GradDiff] [--with-original] [--quick] [--threads 1]

For each (alpha, steps), UNDO (``experiment=unlearn/tofu/undo``) distils the demo's unlearned model (the teacher)
into a noised copy for exactly ``steps`` steps (``recovery=null``) on ``--distill-data``. OU's TOFU evaluation then
runs with the held-out relearning metric (``relearn_heldout``: relearn on half of the forget authors, score only
the other half, at several steps, learning rates and seeds; ``concept_size`` read from the forget split) on every
UNDO student, on the retain-only model (the oracle), on the teacher and, with ``--with-original``, on the
fine-tuned model. ``--quick``: a cheaper attack (one lr, one seed, 10 steps). UNDO's compute is given as a fraction
of the fine-tune's: ``(UNDO steps x UNDO batch) / (fine-tune steps x fine-tune batch)``, i.e. examples seen; see
:func:`compute_fraction` for what that leaves out. OU runs go one at a time on ``--threads`` threads (default: the
demo's, all cores up to 8); on a machine whose cores other jobs share, use 1 (two OpenMP threads on a contended
2-core machine ran UNDO at 0.2 steps/s, one thread at 4.3).

Writes ``DIR/undo_curve/undo_curve.{csv,md,png}``: one row per model, one line per alpha, the oracle and the
teacher as horizontal lines. Resumable: an UNDO run whose model is saved with the requested step count, and an
evaluation whose ``relearn_heldout`` result has the requested settings, are not run again.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRIC = "relearn_heldout"
KEYS = ("forget_Q_A_ROUGE", "forget_Q_A_Prob")
#: Held-out relearning settings: cheap on a CPU (the profile's 3 lrs x 3 seeds x 25 steps, minus lr 1e-5, which
#: moves nothing on the demo's model, and one seed).
RELEARN = {"learning_rates": [1e-4, 1e-3], "seeds": [0, 1], "eval_at_steps": [0, 5, 10, 25], "batch_size": 8}
QUICK_RELEARN = {"learning_rates": [1e-3], "seeds": [0], "eval_at_steps": [0, 5, 10], "batch_size": 8}
TEACHERS = {"duet": "DUET", "graddiff": "GradDiff"}
ORACLE, TEACHER, ORIGINAL, UNDO = "oracle", "teacher", "original", "undo"


# -- pure functions (unit-tested in tests/unit/test_undo_curve.py) ---------------------------------------------------
def compute_fraction(undo_steps: int, undo_batch: int, finetune_steps: int, finetune_batch: int) -> float:
    """UNDO's compute as a fraction of the fine-tune's, in examples: ``(undo_steps x undo_batch) / (finetune_steps x
    finetune_batch)``. Approximations: an example costs the same in both (similar lengths; the script prints the
    measured ratio of mean lengths), and UNDO's teacher forward pass (about a third of a training step's cost on top)
    is not counted."""
    if undo_steps < 0 or min(undo_batch, finetune_steps, finetune_batch) <= 0:
        raise ValueError("batch sizes and the fine-tune's steps must be positive, UNDO's steps non-negative")
    return undo_steps * undo_batch / (finetune_steps * finetune_batch)


def concept_size(rows: Sequence[Mapping[str, Any]], key: str = "author") -> int:
    """Questions per author of a TOFU-layout split whose rows come in blocks of one author each (the demo's and
    TOFU's forget splits): the ``concept_size`` of ``relearn_heldout``. Raises if the blocks are not contiguous or not
    of equal size (then ``concept_size`` would mix authors)."""
    if not rows:
        raise ValueError("empty split")
    blocks: list[list[Any]] = []
    for row in rows:
        if blocks and blocks[-1][0] == row[key]:
            blocks[-1][1] += 1
        else:
            blocks.append([row[key], 1])
    names = [b[0] for b in blocks]
    sizes = {b[1] for b in blocks}
    if len(set(names)) != len(names) or len(sizes) != 1:
        raise ValueError(f"rows are not equal contiguous blocks per {key}: {[(n, s) for n, s in blocks]}")
    return sizes.pop()


def relearned(result: Mapping[str, Any], key: str, at: str | int = "worst") -> dict[str, Any] | None:
    """The held-out forget value of ``key`` after relearning, from a ``relearn_heldout`` result: ``at="worst"``: the
    attacker's best (lr, step > 0) by the seed mean (higher is worse); an int: the worst lr at that step. Returns
    ``{"value", "lr", "step", "unattacked"}`` or None when the result has no curve for ``key``."""
    curves = (result.get("curve") or {}).get(key)
    if not curves:
        return None
    points = []
    for lr, curve in curves.items():
        for step, mean in zip(curve["steps"], curve["mean"], strict=True):
            if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                continue
            if (at == "worst" and step > 0) or step == at:
                points.append((mean, lr, step))
    if not points:
        return None
    value, lr, step = max(points)
    return {"value": value, "lr": lr, "step": step, "unattacked": (result.get("unattacked") or {}).get(key)}


@dataclass(frozen=True)
class Run:
    """One evaluated model: ``kind`` is undo / oracle / teacher / original; alpha and steps for UNDO only."""

    label: str
    kind: str
    eval_json: Path
    alpha: float | None = None
    steps: int | None = None
    fraction: float | None = None


def table_rows(runs: Iterable[Run], at: str | int = "worst", keys: Sequence[str] = KEYS) -> list[dict[str, Any]]:
    """One row per evaluated model whose eval JSON exists: held-out values before and after relearning per key, OU's
    forget ROUGE / model_utility (TOFU_SUMMARY.json beside it, when present). Missing evals are left out."""
    rows = []
    for run in runs:
        if not run.eval_json.is_file():
            continue
        logs = json.loads(run.eval_json.read_text())
        result = logs.get(METRIC) or {}
        summary_path = run.eval_json.parent / "TOFU_SUMMARY.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        row: dict[str, Any] = {
            "label": run.label,
            "kind": run.kind,
            "alpha": run.alpha,
            "undo_steps": run.steps,
            "compute_fraction": run.fraction,
            "forget_ROUGE": summary.get("forget_Q_A_ROUGE"),
            "model_utility": summary.get("model_utility"),
        }
        for key in keys:
            point = relearned(result, key, at)
            short = key.removeprefix("forget_Q_A_")
            row[f"heldout_{short}_before"] = point and point["unattacked"]
            row[f"heldout_{short}_relearned"] = point and point["value"]
            row[f"heldout_{short}_at"] = point and f"{point['lr']} step {point['step']}"
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def render_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "(no evaluated model yet)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["label"])
        writer.writeheader()
        writer.writerows(rows)


def curves_by_alpha(rows: Sequence[Mapping[str, Any]], column: str) -> dict[float, list[tuple[float, float]]]:
    """``{alpha: [(compute_fraction, value), ...]}`` of the UNDO rows, sorted by compute."""
    out: dict[float, list[tuple[float, float]]] = {}
    for r in rows:
        if r["kind"] == UNDO and r.get(column) is not None:
            out.setdefault(r["alpha"], []).append((r["compute_fraction"], r[column]))
    return {a: sorted(points) for a, points in sorted(out.items())}


def reference(rows: Sequence[Mapping[str, Any]], kind: str, column: str) -> float | None:
    return next((r[column] for r in rows if r["kind"] == kind and r.get(column) is not None), None)


def plot_curve(rows: Sequence[Mapping[str, Any]], path: Path, keys: Sequence[str] = KEYS, title: str = "") -> Path:
    """One panel per key: x = UNDO compute (fraction of the fine-tune's), y = held-out forget value after relearning;
    one line per alpha, horizontal lines for the oracle (retain-only), the teacher and the original model. A last
    panel shows OU's model_utility the same way (what the robustness costs at each compute)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (f"heldout_{key.removeprefix('forget_Q_A_')}_relearned", f"held-out {key} after relearning (worst) ↓")
        for key in keys
    ]
    panels.append(("model_utility", "model_utility (OU, before any attack) ↑"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    styles = {ORACLE: ("green", "--", "oracle (retain-only)"), TEACHER: ("red", ":", "teacher (unlearned)")}
    styles[ORIGINAL] = ("gray", "-.", "original (fine-tuned)")
    for ax, (column, ylabel) in zip(axes[0], panels, strict=True):
        fractions = []
        for alpha, points in curves_by_alpha(rows, column).items():
            xs, ys = zip(*points, strict=True)
            fractions += xs
            ax.plot(xs, ys, marker="o", label=f"UNDO alpha={alpha:g}")
        for kind, (color, ls, label) in styles.items():
            value = reference(rows, kind, column)
            if value is not None:
                ax.axhline(value, color=color, linestyle=ls, label=f"{label}: {value:.2f}")
        if fractions and max(fractions) / max(min(fractions), 1e-12) > 4:
            ax.set_xscale("log")
        ax.set_xlabel("UNDO compute / fine-tune compute (examples)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def verdict(rows: Sequence[Mapping[str, Any]], column: str, tol: float = 0.02) -> str:
    """Whether more distillation compute lowers held-out relearning towards the oracle (the UNDO paper's trend), per
    alpha: the value from the least to the most compute, and the share of the teacher-oracle gap closed."""
    oracle, teacher = reference(rows, ORACLE, column), reference(rows, TEACHER, column)
    curves = curves_by_alpha(rows, column)
    if not curves or oracle is None or teacher is None:
        return "incomplete: the oracle, the teacher and at least one UNDO run must be evaluated."
    gap = teacher - oracle
    parts, falling, closed = [], [], []
    for alpha, points in curves.items():
        values = [v for _, v in points]
        share = (teacher - values[-1]) / gap if gap > tol else None
        monotone = all(b <= a + tol for a, b in itertools.pairwise(values))
        falls = len(values) > 1 and values[-1] < values[0] - tol
        falling.append(monotone and falls)
        closed.append(share)
        trace = " -> ".join(f"{v:.3f} ({f:.0%})" for f, v in points)
        closes = f", {share:.0%} of the teacher-oracle gap closed" if share is not None else ""
        parts.append(f"alpha {alpha:g}: {trace}{closes}")
    head = f"{column}: teacher {teacher:.3f}, oracle {oracle:.3f}. " + "; ".join(parts) + "."
    if all(len(points) < 2 for points in curves.values()):
        return head + " No trend yet: one compute point per alpha."
    if gap <= tol:
        return head + " Not testable: the teacher is already at the oracle's level on this attack."
    best = max((s for s in closed if s is not None), default=0.0)
    if all(falling) and best >= 0.5:
        return head + " Reproduced: held-out relearning falls with compute, towards the oracle."
    if any(falling):
        return head + " Partly reproduced: held-out relearning falls with compute for some alphas only."
    return head + " Not reproduced: more distillation compute does not lower held-out relearning for any alpha."


def eval_done(eval_json: Path, settings: Mapping[str, Any]) -> bool:
    """An evaluation holding a relearn_heldout result with these settings (resume)."""
    if not eval_json.is_file():
        return False
    result = json.loads(eval_json.read_text()).get(METRIC) or {}
    got = result.get("settings") or {}
    return bool(result.get("curve")) and all(got.get(k) == v for k, v in settings.items())


def undo_done(model_dir: Path, steps: int) -> bool:
    state = model_dir / "trainer_state.json"
    if not (model_dir / "model.safetensors").is_file() or not state.is_file():
        return False
    return json.loads(state.read_text()).get("global_step") == steps


def relearn_overrides(relearn: Mapping[str, Any], concept_size: int, max_new_tokens: int) -> list[str]:
    """OU eval overrides adding the held-out relearning metric with these settings."""
    m = f"eval.tofu.metrics.{METRIC}"
    return [
        f"+eval/tofu_metrics@{m}={METRIC}",
        f"{m}.learning_rates=[{','.join(f'{lr:g}' for lr in relearn['learning_rates'])}]",
        f"{m}.seeds=[{','.join(map(str, relearn['seeds']))}]",
        f"{m}.eval_at_steps=[{','.join(map(str, relearn['eval_at_steps']))}]",
        f"{m}.batch_size={relearn['batch_size']}",
        f"{m}.concept_size={concept_size}",
        f"{m}.pre_compute.forget_Q_A_ROUGE.generation_args.max_new_tokens={max_new_tokens}",
    ]


def undo_overrides(teacher: Path, alpha: float, steps: int, args: argparse.Namespace) -> list[str]:
    """UNDO's own overrides: exactly ``steps`` steps (no recovery stop), cosine with 5% warmup."""
    return [
        f"data.retain.TOFU_QA_retain.args.hf_args.name={args.distill_data}",
        f"trainer.method_args.teacher={teacher}",
        f"trainer.method_args.alpha={alpha}",
        f"trainer.method_args.beta={args.beta}",
        "trainer.method_args.recovery=null",
        f"trainer.method_args.recovery_eval_steps={max(1, steps // 4)}",
        f"trainer.args.max_steps={steps}",
        f"trainer.args.learning_rate={args.undo_lr}",
        f"trainer.args.per_device_train_batch_size={args.undo_batch}",
        "trainer.args.gradient_accumulation_steps=1",
        f"trainer.args.warmup_steps={max(1, round(0.05 * steps))}",
        f"trainer.args.logging_steps={max(1, steps // 4)}",
        "trainer.args.seed=0",
    ]


# -- running OU (through the demo's Demo class) ----------------------------------------------------------------------
def mean_tokens(tokenizer: Any, rows: Sequence[Mapping[str, Any]]) -> float:
    return sum(len(tokenizer(f"{r['question']} {r['answer']}")["input_ids"]) for r in rows) / max(1, len(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a finished `duet-plugin demo` folder")
    parser.add_argument("--ou-root", default=None)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.25, 0.6, 0.9])
    parser.add_argument("--undo-steps", type=int, nargs="+", default=[50, 150, 400])
    parser.add_argument("--teacher", choices=sorted(TEACHERS.values()), default="DUET")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--undo-lr", type=float, default=1e-3)
    parser.add_argument("--undo-batch", type=int, default=32)
    parser.add_argument("--distill-data", default="demo_retain", help="TOFU-layout config UNDO distils on")
    parser.add_argument("--at", default="worst", help="'worst' (attacker's best lr and step) or a relearning step")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per OU run (runs go one at a time)")
    parser.add_argument("--with-original", action="store_true", help="also the fine-tuned model (a line at the top)")
    parser.add_argument("--quick", action="store_true", help="a cheaper relearning attack: 1 lr, 1 seed, 10 steps")
    args = parser.parse_args()
    at: str | int = args.at if args.at == "worst" else int(args.at)

    from duet_plugin.demo.pipeline import Demo

    demo = Demo(args.workdir, ou_root=args.ou_root, existing=True, threads=args.threads)
    w, threads = demo.workdir, demo.threads
    out = w / "undo_curve"
    out.mkdir(exist_ok=True)
    relearn = QUICK_RELEARN if args.quick else RELEARN
    data = w / "locuslab" / "TOFU"
    forget = json.loads((data / f"{demo.settings.forget_split}.json").read_text())
    size = concept_size(forget)
    state = json.loads((w / "saves" / "finetune" / "demo_full" / "trainer_state.json").read_text())
    ft_steps, ft_batch = state["global_step"], state["train_batch_size"]  # the demo's gradient accumulation is 1
    teacher_dir = w / "saves" / "unlearn" / f"demo_{args.teacher.lower()}"
    retain_logs = w / "saves" / "eval" / "demo_retain" / "TOFU_EVAL.json"
    ft_model = w / "saves" / "finetune" / "demo_full"

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ft_model)
    token_ratio = mean_tokens(tok, json.loads((data / f"{args.distill_data}.json").read_text())) / mean_tokens(
        tok, json.loads((data / "demo_full.json").read_text())
    )

    def evaluate(run: Run, model: Path) -> None:
        if eval_done(run.eval_json, relearn):
            demo.say(f"      {run.eval_json.parent.name}: evaluated already, skipped")
            return
        logs = None if run.kind == ORACLE else retain_logs
        extra = relearn_overrides(relearn, size, demo.settings.eval_max_new_tokens)
        name = f"eval_{run.eval_json.parent.name}"
        demo.evaluate(name, model, run.eval_json.parent, logs, extra=extra, threads=threads)

    def undo(name: str, alpha: float, steps: int) -> Path:
        model = w / "saves" / "unlearn" / name
        if undo_done(model, steps):
            demo.say(f"      {name}: trained already, skipped")
            return model
        return demo.undo(name, undo_overrides(teacher_dir, alpha, steps, args), threads=threads)

    evals = w / "saves" / "eval" / "undo_curve"
    oracle_dir = w / "saves" / "finetune" / "demo_retain"
    teacher_eval = evals / f"teacher_{args.teacher.lower()}" / "TOFU_EVAL.json"
    fixed = [
        (Run("oracle: retain-only", ORACLE, evals / "oracle" / "TOFU_EVAL.json"), oracle_dir),
        (Run(f"teacher: {args.teacher}", TEACHER, teacher_eval), teacher_dir),
        (Run("original: fine-tuned", ORIGINAL, evals / "original" / "TOFU_EVAL.json"), ft_model),
    ][: 3 if args.with_original else 2]
    # least compute first: an interrupted sweep still has a point per alpha
    grid = [(a, s) for s in sorted(args.undo_steps) for a in args.alphas]
    students = []
    for alpha, steps in grid:
        name = f"undo_curve_{args.teacher.lower()}_a{alpha:g}_s{steps}"
        fraction = compute_fraction(steps, args.undo_batch, ft_steps, ft_batch)
        run = Run(f"UNDO a={alpha:g}, {steps} steps", UNDO, evals / name / "TOFU_EVAL.json", alpha, steps, fraction)
        students.append((run, name))
    runs = [r for r, _ in fixed] + [r for r, _ in students]
    demo.n_jobs = len(fixed) + 2 * len(students)
    t0 = time.time()
    where = "the attacker's best lr and step" if at == "worst" else f"step {at}, the attacker's best lr"
    settings = (
        f"Teacher: the demo's {args.teacher} model. UNDO: beta {args.beta}, lr {args.undo_lr}, "
        f"batch {args.undo_batch}, cosine with 5% warmup, recovery=null (exactly the given steps), distilled on "
        f"{args.distill_data}. Fine-tune: {ft_steps} steps x batch {ft_batch}; compute fraction = UNDO steps x batch "
        f"/ ({ft_steps} x {ft_batch}), in examples ({args.distill_data} rows are {token_ratio:.2f}x as long as "
        f"demo_full's in tokens, and UNDO's teacher forward pass is not counted). Held-out relearning ({METRIC}): "
        f"{demo.settings.forget_split}, concept_size {size} (one author per {size} rows; half the authors relearned, "
        f"the other half scored), lrs {relearn['learning_rates']}, seeds {relearn['seeds']}, steps "
        f"{relearn['eval_at_steps']}, batch {relearn['batch_size']}; relearned = the held-out value after relearning "
        f"at {where}, by the seed mean; before = step 0 (no attack)."
    )

    def write() -> tuple[list[dict[str, Any]], list[str]]:
        rows = table_rows(runs, at)
        write_csv(rows, out / "undo_curve.csv")
        verdicts = [f"Verdict ({k}): " + verdict(rows, f"heldout_{k}_relearned") for k in ("ROUGE", "Prob")]
        text = "\n\n".join(
            [
                "# UNDO's compute curve on the demo",
                settings,
                render_markdown(rows),
                *verdicts,
                f"Wall time: {time.time() - t0:.0f}s on {threads} threads.",
            ]
        )
        (out / "undo_curve.md").write_text(text + "\n")
        if rows:
            try:
                plot_curve(rows, out / "undo_curve.png", title=f"UNDO on the demo's {args.teacher} model")
            except ImportError:
                demo.say("The plot needs matplotlib: pip install matplotlib.")
        return rows, verdicts

    for run, model in fixed:
        evaluate(run, model)
    write()
    for run, name in students:
        evaluate(run, undo(name, run.alpha, run.steps))
        write()  # after every student: an interrupted sweep leaves a valid table and plot
    rows, verdicts = write()
    demo.say(f"\n{settings}\n\n{render_markdown(rows)}\n\n" + "\n".join(verdicts))
    demo.say(f"Written: {out / 'undo_curve.csv'}, {out / 'undo_curve.md'}, {out / 'undo_curve.png'}")


if __name__ == "__main__":
    main()
