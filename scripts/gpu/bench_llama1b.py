"""The efficiency comparison at Llama-3.2-1B's shape on a GPU, in bfloat16, as one command.

Runs ``scripts/bench_efficiency.py --shape llama-3.2-1b`` (random weights at Llama-3.2-1B's shape: hidden 2048, 32 / 8
heads, MLP 8192, 128,256-token vocabulary, tied embeddings, rope_theta 500,000; the demo's fictitious-author data and
tokenizer) on CUDA with bf16 weights and OU's bf16 autocast, ``sdpa`` attention and AdamW (torch), for OU's
GradDiff (NLL retain), NPO and SFT against DUET (precomputed and online) and BiDistill, and prints the tables with
the step-time and peak-memory ratios of every method against GradDiff (NLL), NPO and SFT. All trainers are held at
once and their steps interleaved when they fit in the GPU's memory (estimated first), else one method at a time.

    python scripts/gpu/bench_llama1b.py [--layers 16] [--out DIR]   # needs CUDA and OU's stack (scripts/gpu/env.sh)
    python scripts/gpu/bench_llama1b.py --dry-run                   # the same code path on the CPU, tiny shape

``--dry-run`` (or ``DUET_GPU_DRY_RUN=1``): the miniature of the same shape (``llama-3.2-1b-mini``), bf16, on the
CPU, one step per method; what the unit test runs. Other arguments go to bench_efficiency.py unchanged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "scripts" / "bench_efficiency.py"
BASELINES = ["GradDiff (NLL retain)", "NPO", "SFT (NLL, forget+retain in one batch)"]
OURS = ["DUET precomputed", "DUET online", "BiDistill"]
CARRIED_OU = REPO / ".gpu_wheels" / "open-unlearning"  # what scripts/gpu/fetch_wheels.sh copies


def held_estimate(layers: int, vocab: int = 128256, hidden: int = 2048, mlp: int = 8192, kv: int = 512) -> int:
    """Bytes the interleaved comparison holds on the GPU in bf16: 6 trainable models with AdamW's two moments
    (3 copies each) and 2 frozen copies (NPO's reference, DUET online's teacher)."""
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * mlp + 2 * hidden
    params = vocab * hidden + layers * per_layer + hidden
    return 2 * params * (6 * 3 + 2)


def bench_args(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """bench_efficiency.py's arguments for a GPU run or the CPU dry run."""
    common = [
        "--only",
        *BASELINES,
        *OURS,
        "--against",
        *BASELINES,
        "--dtype",
        "bfloat16",
        "--length-factors",
        "--vocabs",
    ]
    if args.dry_run:
        return [
            *common,
            "--shape",
            "llama-3.2-1b-mini",
            "--cpu",
            "--threads",
            "1",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--precompute-repeats",
            "0",
            *extra,
        ]
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_llama1b: no CUDA device (use --dry-run for the CPU rehearsal)")
    total = torch.cuda.get_device_properties(0).total_memory
    need = held_estimate(args.layers)
    sequential = need > 0.7 * total or args.sequential
    print(
        f"bench_llama1b: {args.layers} layers, held estimate {need / 2**30:.1f} GiB of {total / 2**30:.1f} GiB: "
        + ("one method at a time" if sequential else "all trainers held, steps interleaved"),
        flush=True,
    )
    return [
        *common,
        "--shape",
        "llama-3.2-1b",
        "--layers",
        str(args.layers),
        "--batch-size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--repeats",
        str(args.repeats),
        "--warmup",
        "3",
        "--precompute-repeats",
        "2",
        *(["--sequential"] if sequential else []),
        *extra,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", default=os.environ.get("DUET_GPU_DRY_RUN") == "1")
    parser.add_argument("--layers", type=int, default=16, help="layers of Llama-3.2-1B's 16 (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="forget+retain pairs per step")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sequential", action="store_true", help="one method at a time even if all would fit")
    parser.add_argument(
        "--ou-root", default=os.environ.get("OU_ROOT") or (str(CARRIED_OU) if CARRIED_OU.is_dir() else None)
    )
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for the log and the raw JSON")
    args, extra = parser.parse_known_args(argv)
    if not args.ou_root:
        parser.error("no OpenUnlearning checkout: --ou-root, $OU_ROOT or .gpu_wheels/open-unlearning")
    cmd = [sys.executable, str(BENCH), "--ou-root", str(Path(args.ou_root).resolve()), *bench_args(args, extra)]
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        cmd += ["--json", str(out / ("bench_llama1b_dry.json" if args.dry_run else "bench_llama1b.json"))]
    print("bench_llama1b:", " ".join(f"'{c}'" if " " in c else c for c in cmd), flush=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = proc.stdout
    sys.stdout.write(log)
    if out:
        (out / ("bench_llama1b_dry.log" if args.dry_run else "bench_llama1b.log")).write_text(log)
    verdict = "PASS" if proc.returncode == 0 and "### Against baselines" in log else "FAIL"
    print(f"bench_llama1b: {verdict} (rc {proc.returncode}, {time.perf_counter() - start:.0f} s)", flush=True)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
