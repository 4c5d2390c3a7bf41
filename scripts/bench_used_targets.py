"""What a precomputed teacher costs before the first step on a TOFU-size split: OU's ``train.py`` as a user runs it.

Writes the fictitious-author dataset with ``--authors`` authors of 10 questions each (400: forget01 = 40 questions,
retain99 = 3,960, TOFU's sizes) in OU's hub layout and a random Llama of the demo's size (vocabulary 1,500, hidden
128, 4 layers), then runs ``src/train.py`` with ``experiment=unlearn/tofu/{duet,bidistill}`` for ``--steps`` steps
of batch ``--batch-size``, one run at a time, and prints per run: the queries the teacher computed targets for, the
log's own precompute time where it gives one, and the process wall time. ``--plugin-src`` runs another checkout of
the plugin (e.g. ``git worktree add /tmp/before <commit>``) through ``PYTHONPATH`` for a before/after in the same
session; ``--repeats`` interleaves the checkouts.

    python scripts/bench_used_targets.py --ou-root /path/to/open-unlearning [--plugin-src /tmp/before] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from duet_plugin.demo.fictitious_authors import build_dataset, write_hub_layout
from duet_plugin.demo.tiny_llama import build_tiny_llama, build_tokenizer, save_model
from duet_plugin.openunlearning.cpu_overrides import offline_env, train_overrides

LINE = re.compile(r"precomputed teacher targets for (?:the )?(\d+) queries[^\n]*")
SECONDS = re.compile(r" in ([\d.]+) s\b")


def run(ou_root: Path, workdir: Path, model: Path, experiment: str, src: str | None, args: argparse.Namespace):
    out = workdir / "out" / f"{experiment}_{'before' if src else 'now'}"
    cmd = [
        sys.executable,
        str(ou_root / "src" / "train.py"),
        "--config-name=unlearn.yaml",
        f"experiment=unlearn/tofu/{experiment}",
        f"task_name=used_{experiment}",
        "forget_split=forget01",
        "retain_split=retain99",
        *train_overrides(model),
        f"trainer.args.per_device_train_batch_size={args.batch_size}",
        "trainer.args.gradient_accumulation_steps=1",
        f"++trainer.args.max_steps={args.steps}",
        "++trainer.args.save_strategy=no",
        f"paths.output_dir={out}",
    ]
    env = {**os.environ, **offline_env(workdir / ".hf_datasets_cache", args.threads)}
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"{experiment} ({src or 'this checkout'}) failed:\n{log[-4000:]}")
    found = LINE.search(log)
    queries = int(found.group(1)) if found else None
    took = SECONDS.search(found.group(0)) if found else None
    seconds = float(took.group(1)) if took else None
    return queries, seconds, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ou-root", default=os.environ.get("OU_ROOT"), required=not os.environ.get("OU_ROOT"))
    parser.add_argument("--plugin-src", help="another checkout of this repository to compare with")
    parser.add_argument("--authors", type=int, default=400)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", help="default: a temporary folder")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_used_"))
    dataset = build_dataset(n_authors=args.authors, qa_per_author=10, seed=0)
    write_hub_layout(dataset, workdir, overwrite=True)
    texts = [f"{r['question']} {r['answer']}" for rows in dataset.configs.values() for r in rows]
    tokenizer = build_tokenizer(texts, vocab_size=1500)
    model = workdir / "model"
    save_model(build_tiny_llama(tokenizer, hidden_size=128, num_layers=4, num_heads=4, seed=0), tokenizer, model)
    sizes = {s: len(dataset.configs[s]) for s in ("forget01", "retain99")}
    print(f"forget01: {sizes['forget01']} questions, retain99: {sizes['retain99']}; {args.steps} steps of batch "
          f"{args.batch_size}; {args.threads} threads; workdir {workdir}")  # fmt: skip
    print("\n| method | plugin | queries with targets | precompute (log) | train.py wall |\n|---|---|---|---|---|")
    sources = [None, args.plugin_src] if args.plugin_src else [None]
    for _ in range(args.repeats):
        for experiment in ("duet", "bidistill"):
            for src in sources:
                queries, seconds, wall = run(Path(args.ou_root).resolve(), workdir, model, experiment, src, args)
                label = "this checkout" if src is None else src
                pre = f"{seconds:.1f} s" if seconds is not None else "not logged"
                print(f"| {experiment} | {label} | {queries} | {pre} | {wall:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
