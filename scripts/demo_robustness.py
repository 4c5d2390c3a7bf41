"""The robustness suite on the demo: attack the fine-tuned model and every unlearned one with OU's eval.py.

Run after ``duet-plugin demo --workdir DIR`` (it reuses DIR's models and data and adds its runs there):

    python scripts/demo_robustness.py --workdir DIR --ou-root $OU_ROOT

Unlearns the demo's fine-tuned model with OU's NPO as well (same schedule as the demo's GradDiff), then runs
``experiment=eval/tofu/robustness`` (OU's TOFU metrics + relearning, prompt, prefill and quantization attacks,
over-refusal and DUET's performance shift) on the fine-tuned model first, whose logs then serve as the original
model's (``original_logs_path``) for the relearning recovery and the shift of every other model. Prints one markdown
table and writes it to DIR/robustness_results.md.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from duet_plugin.demo.pipeline import Demo

ATTACKS = ("relearn_attack", "prompt_attack", "prefill_attack", "quantization_attack")


def robustness_eval(demo: Demo, label: str, model: Path, original: Path | None, args: argparse.Namespace) -> Path:
    """OU's eval.py with the robustness experiment; the attack children generate as briefly as OU's own ROUGE."""
    n = demo.settings.eval_max_new_tokens
    extra = [
        *(f"eval.tofu.metrics.{a}.pre_compute.forget_Q_A_ROUGE.generation_args.max_new_tokens={n}" for a in ATTACKS),
        f"eval.tofu.metrics.performance_shift.pre_compute.forget_Q_A_PARA_ROUGE.generation_args.max_new_tokens={n}",
        f"eval.tofu.metrics.relearn_attack.steps={args.relearn_steps}",
        f"eval.tofu.metrics.relearn_attack.learning_rates=[{','.join(str(lr) for lr in args.relearn_lrs)}]",
    ]
    if original is not None:
        extra.append(f"original_logs_path={original}")
    out = demo.workdir / "saves" / "eval" / f"robustness_{label}"
    retain_logs = demo.workdir / "saves" / "eval" / "demo_retain" / "TOFU_EVAL.json"
    return demo.evaluate(f"robustness_{label}", model, out, retain_logs, experiment="eval/tofu/robustness", extra=extra)


def _get(logs: dict[str, Any], *path: str) -> Any:
    node: Any = logs
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _f(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


COLUMNS = (
    ("forget ROUGE ↓", lambda e: _get(e, "forget_Q_A_ROUGE", "agg_value")),
    ("forget refusals", lambda e: _get(e, "prompt_attack", "unattacked_refusal", "forget_Q_A_ROUGE")),
    ("relearn ROUGE (worst lr) ↓", lambda e: _get(e, "relearn_attack", "agg_value")),
    ("relearn recovery ↓", lambda e: _get(e, "relearn_attack", "recovery")),
    ("prompt ROUGE (worst) ↓", lambda e: _get(e, "prompt_attack", "agg_value")),
    ("worst template", lambda e: _get(e, "prompt_attack", "worst_variant")),
    (
        "refusals under worst template",
        lambda e: _get(
            e, "prompt_attack", "refusal_by_attack", _get(e, "prompt_attack", "worst_variant") or "", "forget_Q_A_ROUGE"
        ),
    ),
    ("prefill ROUGE (worst k) ↓", lambda e: _get(e, "prefill_attack", "agg_value")),
    ("int4 ROUGE ↓", lambda e: _get(e, "quantization_attack", "value_by_attack", "int4", "forget_Q_A_ROUGE")),
    ("over-refusal ↓", lambda e: _get(e, "over_refusal", "agg_value")),
    ("model_utility ↑", lambda e: _get(e, "model_utility", "agg_value")),
    ("performance shift ↑", lambda e: _get(e, "performance_shift", "agg_value")),
)


def render(rows: dict[str, dict[str, Any]], forget_split: str) -> str:
    head = f"| model ({forget_split}) | " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    lines += [f"| {label} | " + " | ".join(_f(f(logs)) for _, f in COLUMNS) + " |" for label, logs in rows.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a finished `duet-plugin demo` folder")
    parser.add_argument("--ou-root", default=None)
    parser.add_argument("--relearn-steps", type=int, default=10)
    parser.add_argument("--relearn-lrs", type=float, nargs="+", default=[1e-4, 1e-3])
    args = parser.parse_args()

    demo = Demo(args.workdir, ou_root=args.ou_root, existing=True)
    w, t0 = demo.workdir, time.time()
    finetuned = w / "saves" / "finetune" / "demo_full"
    models = {
        "retain-only": w / "saves" / "finetune" / "demo_retain",
        "GradDiff": w / "saves" / "unlearn" / "demo_graddiff",
        "DUET": w / "saves" / "unlearn" / "demo_duet",
    }
    need_npo = not (w / "saves" / "unlearn" / "demo_npo").is_dir()
    demo.n_jobs = len(models) + 3 + need_npo
    with ThreadPoolExecutor(max_workers=2) as pool:
        original = pool.submit(robustness_eval, demo, "fine-tuned", finetuned, None, args)
        npo = pool.submit(demo.unlearn, "npo", finetuned) if need_npo else None
        jobs = {
            label: pool.submit(lambda label=label, m=m: robustness_eval(demo, label, m, original.result(), args))
            for label, m in models.items()
        }
        npo_path = npo.result() if npo is not None else w / "saves" / "unlearn" / "demo_npo"
        jobs["NPO"] = pool.submit(robustness_eval, demo, "NPO", npo_path, original.result(), args)
        rows = {"fine-tuned": json.loads(original.result().read_text())}
        rows |= {label: json.loads(job.result().read_text()) for label, job in jobs.items()}
    table = render(rows, demo.settings.forget_split)
    settings = (
        f"Relearning: {args.relearn_steps} steps of batch 8 on {demo.settings.forget_split} at lr {args.relearn_lrs} "
        f"(worst case); prompt templates: reverse_prompt, role_play, prefix_injection, few_shot, paraphrase; prefill "
        f"k = 2, 4, 8 answer tokens; int4: per-channel RTN. Recovery and shift against the fine-tuned model's logs."
    )
    wall = time.time() - t0
    (w / "robustness_results.md").write_text(
        f"# Robustness suite on the demo\n\n{settings}\n\n{table}\n\nWall time: {wall:.0f}s\n"
    )
    print(f"\n{settings}\n\n{table}\n\nWall time: {wall:.0f}s; written to {w / 'robustness_results.md'}")


if __name__ == "__main__":
    main()
