"""BiDistill against DUET on the demo: forget / retain / boundary metrics and the prefill-attack leakage of each.

Run after ``duet-plugin demo --workdir DIR`` (it reuses DIR's fine-tuned model, data and DUET run):

    python scripts/demo_bidistill.py --workdir DIR --ou-root $OU_ROOT

Trains ``experiment=unlearn/tofu/bidistill`` from the demo's fine-tuned model with the demo's teacher prefix and
DUET's schedule: full (pull + push; forget, retain with 2- and 4-word prefilled retain answers, boundary = real
authors + world facts, adversarial = forget answers with 2 or 4 words prefilled, aligned with the teacher's response
start), and one ablation per switch (``VARIANTS``). Every model (the fine-tuned one, the steered teacher on the demo's
prefixed copy of the data, the demo's DUET and each BiDistill) is then evaluated with OU's TOFU metrics plus
``over_refusal`` (boundary refusals) and ``prefill_attack`` (k = 2, 4, 8 answer tokens seeded into the assistant
turn). Prints one markdown table and writes it to DIR/bidistill_results.md.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from duet_plugin.demo.pipeline import Demo
from duet_plugin.openunlearning.cpu_overrides import train_overrides

VARIANTS = {
    "BiDistill": [],
    "BiDistill, no prefilled retain": ["data.forget.BiDistill_TOFU.args.prefilled_retain=null"],
    "BiDistill, no push": ["trainer.method_args.w_push=0"],
    "BiDistill, no boundary": ["data.forget.BiDistill_TOFU.args.streams.boundary=null"],
    "BiDistill, no adversarial": ["data.forget.BiDistill_TOFU.args.adversarial_from_forget=null"],
    "BiDistill, BiLD distance": ["trainer.method_args.distance=bild"],
    "BiDistill, prefill_target=continue": ["trainer.method_args.prefill_target=continue"],
}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).replace("__", "_")


def demo_prefix(workdir: Path) -> str:
    for line in (workdir / "demo_results.md").read_text().splitlines():
        if line.startswith("Teacher prefix: "):
            return line.split(": ", 1)[1]
    raise FileNotFoundError(f"{workdir / 'demo_results.md'} names no teacher prefix; rerun `duet-plugin demo`.")


def bidistill(demo: Demo, label: str, overrides: list[str], prefix: str) -> Path:
    s = demo.settings
    name = "demo_" + _slug(label)
    demo.ou(
        f"unlearn_{name}",
        "train",
        [
            "--config-name=unlearn.yaml",
            "experiment=unlearn/tofu/bidistill",
            f"task_name={name}",
            *train_overrides(demo.workdir / "saves" / "finetune" / "demo_full"),
            *demo._common(),
            f"retain_split={demo.retain_split}",
            f"trainer.args.num_train_epochs={s.unlearn_epochs}",
            f"trainer.args.learning_rate={s.unlearn_lr}",
            f"trainer.args.per_device_train_batch_size={s.unlearn_batch_size}",
            "trainer.args.gradient_accumulation_steps=1",
            f"trainer.args.seed={s.seed}",
            "trainer.method_args.prefix.name=null",
            f"trainer.method_args.prefix.text='{prefix}'",
            "trainer.method_args.prefix.placement=user",
            *overrides,
        ],
    )
    return demo.workdir / "saves" / "unlearn" / name


def evaluate(demo: Demo, label: str, model: Path, cwd: Path | None = None) -> Path:
    n = demo.settings.eval_max_new_tokens
    extra = [
        "+eval/tofu_metrics@eval.tofu.metrics.prefill_attack=prefill_attack",  # several at once: name each package
        "+eval/tofu_metrics@eval.tofu.metrics.over_refusal=over_refusal",
        f"eval.tofu.metrics.prefill_attack.pre_compute.forget_Q_A_ROUGE.generation_args.max_new_tokens={n}",
    ]
    out = demo.workdir / "saves" / "eval" / f"bidistill_{_slug(label)}"
    retain_logs = demo.workdir / "saves" / "eval" / "demo_retain" / "TOFU_EVAL.json"
    return demo.evaluate(f"eval_{out.name}", model, out, retain_logs, cwd=cwd, extra=extra)


def _get(logs: dict[str, Any], *path: str) -> Any:
    node: Any = logs
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _refusals(logs: dict[str, Any]) -> float | None:
    from duet_plugin.demo.pipeline import refusal_rate

    return refusal_rate(logs)


COLUMNS = (
    ("forget ROUGE ↓", lambda e: _get(e, "forget_Q_A_ROUGE", "agg_value")),
    ("forget Prob ↓", lambda e: _get(e, "forget_Q_A_Prob", "agg_value")),
    ("forget refusals", _refusals),
    ("retain ROUGE ↑", lambda e: _get(e, "retain_Q_A_ROUGE", "agg_value")),
    ("boundary refusals ↓", lambda e: _get(e, "over_refusal", "agg_value")),
    ("boundary answered ↑", lambda e: _answered(e)),
    ("model_utility ↑", lambda e: _get(e, "model_utility", "agg_value")),
    ("prefill k=2 ROUGE ↓", lambda e: _get(e, "prefill_attack", "value_by_attack", "k2", "forget_Q_A_ROUGE")),
    ("prefill k=4 ROUGE ↓", lambda e: _get(e, "prefill_attack", "value_by_attack", "k4", "forget_Q_A_ROUGE")),
    ("prefill k=8 ROUGE ↓", lambda e: _get(e, "prefill_attack", "value_by_attack", "k8", "forget_Q_A_ROUGE")),
)


def _answered(logs: dict[str, Any]) -> float | None:
    sources = _get(logs, "over_refusal", "by_source") or {}
    rates = [(v["answer_match_rate"], v["n"]) for v in sources.values() if v.get("n")]
    return sum(r * n for r, n in rates) / sum(n for _, n in rates) if rates else None


def render(rows: dict[str, dict[str, Any]], forget_split: str) -> str:
    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [
        f"| model ({forget_split}) | " + " | ".join(c for c, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    lines += [f"| {label} | " + " | ".join(fmt(f(logs)) for _, f in COLUMNS) + " |" for label, logs in rows.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a finished `duet-plugin demo` folder")
    parser.add_argument("--ou-root", default=None)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    demo = Demo(args.workdir, ou_root=args.ou_root, existing=True)
    w, t0, prefix = demo.workdir, time.time(), demo_prefix(demo.workdir)
    models = {
        "fine-tuned": w / "saves" / "finetune" / "demo_full",
        "DUET": w / "saves" / "unlearn" / "demo_duet",
    }
    demo.n_jobs = 2 * len(args.variants) + len(models) + 1
    with ThreadPoolExecutor(max_workers=2) as pool:
        trained = {label: pool.submit(bidistill, demo, label, VARIANTS[label], prefix) for label in args.variants}
        jobs = {label: pool.submit(evaluate, demo, label, m) for label, m in models.items()}
        # The steered teacher itself: the fine-tuned model on the demo's prefixed copy of the data.
        teacher = "teacher: fine-tuned + prefix"
        jobs[teacher] = pool.submit(evaluate, demo, teacher, models["fine-tuned"], w / "teacher_view")
        jobs |= {
            label: pool.submit(lambda label=label, job=job: evaluate(demo, label, job.result()))
            for label, job in trained.items()
        }
        rows = {label: json.loads(job.result().read_text()) for label, job in jobs.items()}
    table = render(rows, demo.settings.forget_split)
    wall = time.time() - t0
    settings = (
        f"Teacher prefix: {prefix}\n\nSchedule (all unlearning runs): {demo.settings.unlearn_epochs} epochs over the "
        f"forget split, lr {demo.settings.unlearn_lr}, batch {demo.settings.unlearn_batch_size}, positions first, "
        "precomputed targets (BiDistill: K' = 256 stored). Boundary = TOFU real authors + world facts; adversarial = "
        "forget answers with 2 and 4 words prefilled; prefilled retain answers (2, 4 words). Prefill attack: the "
        "first k answer tokens seeded into the "
        "assistant turn, ROUGE-L recall of the continuation against the rest of the answer."
    )
    (w / "bidistill_results.md").write_text(
        f"# BiDistill on the demo\n\n{settings}\n\n{table}\n\nWall time: {wall:.0f}s\n"
    )
    print(f"\n{settings}\n\n{table}\n\nWall time: {wall:.0f}s; written to {w / 'bidistill_results.md'}")


if __name__ == "__main__":
    main()
