#!/usr/bin/env bash
# One command on the GPU machine: the Llama-3.2-1B-shape bf16 efficiency comparison (scripts/gpu/bench_llama1b.py).
#   bash scripts/gpu/bench_llama1b.sh [--layers 16] [--dry-run]     (needs .gpu_wheels carried; writes to $OUT)
set -uo pipefail
source "$(dirname "$0")/env.sh" || exit 1
python3 "$(dirname "$0")/bench_llama1b.py" "$@"
