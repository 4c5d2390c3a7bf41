"""UNDO on the demo: robustify the demo's unlearned models, then attack every model with a short relearning run.

Run after ``duet-plugin demo --workdir DIR`` (it reuses DIR's models and data and adds its runs there):

    python scripts/demo_undo_relearn.py --workdir DIR --ou-root $OU_ROOT

For each unlearned teacher (GradDiff, DUET) and each alpha, UNDO (``experiment=unlearn/tofu/undo``) distils the teacher
into a noised copy on ``--distill-data`` (default: everything the fine-tuned model learnt except the forget facts).
Every model (the fine-tuned one, the retain-only reference, the teachers and the UNDO students) is then fine-tuned for
``--relearn-steps`` steps on the forget split (OU's finetune pipeline) and evaluated before and after with OU's TOFU
evaluator. Prints one markdown table (and writes it to DIR/undo_results.md).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from duet_plugin.demo.pipeline import Demo, ModelRow
from duet_plugin.openunlearning.cpu_overrides import train_overrides


def undo(demo: Demo, teacher: str, alpha: float, beta: float, args: argparse.Namespace) -> Path:
    return demo.undo(
        f"demo_undo_{teacher}_a{alpha:g}",
        [
            f"data.retain.TOFU_QA_retain.args.hf_args.name={args.distill_data}",
            f"trainer.method_args.teacher={demo.workdir / 'saves' / 'unlearn' / f'demo_{teacher}'}",
            f"trainer.method_args.alpha={alpha}",
            f"trainer.method_args.beta={beta}",
            f"trainer.method_args.recovery={args.recovery}",
            "trainer.method_args.recovery_eval_steps=25",
            f"trainer.args.max_steps={args.undo_steps}",
            f"trainer.args.learning_rate={args.undo_lr}",
            "trainer.args.per_device_train_batch_size=32",
            "trainer.args.gradient_accumulation_steps=1",
            "trainer.args.warmup_steps=20",
            "trainer.args.logging_steps=25",
            "trainer.args.seed=0",
        ],
    )


def relearn(demo: Demo, label: str, model: Path, args: argparse.Namespace) -> Path:
    name = f"relearn_{label}"
    demo.ou(
        name,
        "train",
        [
            "experiment=finetune/tofu/default",
            f"task_name={name}",
            *train_overrides(model),
            *demo._common(),
            f"data.train.TOFU_QA_full.args.hf_args.name={demo.settings.forget_split}",
            f"++trainer.args.max_steps={args.relearn_steps}",
            f"trainer.args.learning_rate={args.relearn_lr}",
            "trainer.args.per_device_train_batch_size=8",
            "trainer.args.gradient_accumulation_steps=1",
            "trainer.args.logging_steps=5",
            "trainer.args.seed=0",
        ],
    )
    return demo.workdir / "saves" / "finetune" / name


def retain_gap(model: Path) -> str:
    state = json.loads((model / "trainer_state.json").read_text())
    gaps = [(e["step"], e["undo/retain_gap"]) for e in state["log_history"] if "undo/retain_gap" in e]
    return f"{gaps[0][1]:.2f} -> {gaps[-1][1]:.3f} (step {state['global_step']})" if gaps else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a finished `duet-plugin demo` folder")
    parser.add_argument("--ou-root", default=None)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.25, 0.6])
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument(
        "--distill-data",
        default="demo_retain",
        help="TOFU-layout config UNDO distils on: demo_retain (everything the fine-tuned model learnt except the "
        "forget facts: retain facts, paraphrases, real authors, world facts) or a retain split such as retain95",
    )
    parser.add_argument("--recovery", type=float, default=0.95)
    parser.add_argument("--undo-steps", type=int, default=500)
    parser.add_argument("--undo-lr", type=float, default=1e-3)
    parser.add_argument("--relearn-steps", type=int, default=10)
    parser.add_argument("--relearn-lr", type=float, default=1e-3)
    args = parser.parse_args()

    demo = Demo(args.workdir, ou_root=args.ou_root, existing=True)
    w = demo.workdir
    t0 = time.time()
    retain_logs = w / "saves" / "eval" / "demo_retain" / "TOFU_EVAL.json"
    models = {
        "fine-tuned": w / "saves" / "finetune" / "demo_full",
        "retain-only": w / "saves" / "finetune" / "demo_retain",
        "GradDiff": w / "saves" / "unlearn" / "demo_graddiff",
        "DUET": w / "saves" / "unlearn" / "demo_duet",
    }
    before = {
        "fine-tuned": w / "saves" / "eval" / "demo_full" / "TOFU_EVAL.json",
        "retain-only": retain_logs,
        "GradDiff": models["GradDiff"] / "evals" / "TOFU_EVAL.json",
        "DUET": models["DUET"] / "evals" / "TOFU_EVAL.json",
    }
    labels = {"graddiff": "GradDiff", "duet": "DUET"}
    demo.n_jobs = 2 * len(args.alphas) * 2 + (2 * len(args.alphas) + 4) * 2
    with ThreadPoolExecutor(max_workers=2) as pool:
        undos = {
            f"{labels[t]} + UNDO a={a:g}": pool.submit(undo, demo, t, a, args.beta, args)
            for t in ("graddiff", "duet")
            for a in args.alphas
        }
        before_jobs = {
            label: pool.submit(
                lambda label=label, job=job: demo.evaluate(
                    f"eval_{job.result().name}", job.result(), job.result() / "evals", retain_logs
                )
            )
            for label, job in undos.items()
        }
        relearned = {
            label: pool.submit(relearn, demo, label.split()[0].lower(), m, args) for label, m in models.items()
        }
        relearned |= {
            label: pool.submit(lambda label=label, job=job: relearn(demo, job.result().name, job.result(), args))
            for label, job in undos.items()
        }
        after_jobs = {
            label: pool.submit(
                lambda label=label, job=job: demo.evaluate(
                    f"eval_{job.result().name}", job.result(), job.result() / "evals", retain_logs
                )
            )
            for label, job in relearned.items()
        }
        before |= {label: job.result() for label, job in before_jobs.items()}
        after = {label: job.result() for label, job in after_jobs.items()}
        gaps = {label: retain_gap(job.result()) for label, job in undos.items()}

    header = (
        f"| model ({demo.settings.forget_split}) | forget ROUGE ↓ | forget Prob ↓ | retain ROUGE ↑ | model_utility ↑ "
        f"| UNDO retain gap | forget ROUGE after relearn ↓ | forget Prob after relearn ↓ |"
    )
    lines = [header, "|" + "---|" * 8]
    for label in [*models, *undos]:
        b, a = Demo.row(label, before[label]), Demo.row(label, after[label])
        lines.append(
            f"| {label} | {_g(b, 'forget_Q_A_ROUGE')} | {_g(b, 'forget_Q_A_Prob')} | {_g(b, 'retain_Q_A_ROUGE')} "
            f"| {_g(b, 'model_utility')} | {gaps.get(label, '')} | {_g(a, 'forget_Q_A_ROUGE')} "
            f"| {_g(a, 'forget_Q_A_Prob')} |"
        )
    table = "\n".join(lines)
    settings = (
        f"UNDO: alphas {args.alphas}, beta {args.beta}, distilled on {args.distill_data}, lr {args.undo_lr}, batch 32, "
        f"<= {args.undo_steps} steps, "
        f"stop at {args.recovery:.0%} retain recovery. Relearn: {args.relearn_steps} steps of batch 8 on "
        f"{demo.settings.forget_split}, lr {args.relearn_lr}."
    )
    (w / "undo_results.md").write_text(
        f"# UNDO on the demo\n\n{settings}\n\n{table}\n\nWall time: {time.time() - t0:.0f}s\n"
    )
    print(f"\n{settings}\n\n{table}\n\nWall time: {time.time() - t0:.0f}s; written to {w / 'undo_results.md'}")


def _g(row: ModelRow, key: str) -> str:
    value = row.summary.get(key)
    if value is None:
        value = row.details.get(key, {}).get("agg_value") if isinstance(row.details.get(key), dict) else None
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
