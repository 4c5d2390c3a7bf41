#!/usr/bin/env bash
# One command on the GPU machine: install the carried wheels offline, then the smoke pipeline (DUET, BiDistill, UNDO
# through OU's train.py, OU's TOFU eval; bf16 on CUDA). Extra arguments go to smoke_pipeline.py (e.g. --cpu).
set -uo pipefail
source "$(dirname "$0")/env.sh" || { echo "SMOKE FAIL env"; exit 1; }
python3 "$(dirname "$0")/smoke_pipeline.py" "$@"
