#!/usr/bin/env bash
# Wheels for OpenUnlearning's train/eval stack on the lent GPU machine, which has Python 3.12, torch 2.11 and
# transformers 5 (plus numpy, pandas, pyarrow, scipy, scikit-learn, aiohttp, requests, xxhash, absl-py, ...) but
# none of OU's own packages and no network. Run here (with network) in the repo root; writes .gpu_wheels/
# (git-ignored): the wheels (cp312 manylinux where binary,
# pure-Python otherwise), this plugin's wheel, and a copy of OU's src/ and configs/ (.gpu_wheels/open-unlearning).
#
#   bash scripts/gpu/fetch_wheels.sh [OU_ROOT]      # then carry .gpu_wheels (scripts/gpu/env.sh installs it)
#
# OU's pins are kept where OU's code depends on them: transformers 4.45.1 (OU passes tokenizer= to Trainer, gone in
# transformers 5), with the tokenizers / huggingface-hub / accelerate / peft it was tested with here; datasets 3.0.1
# with fsspec 2024.6.1. Everything the machine already has (numpy, pandas, pyarrow, scipy, ...) is not brought.
set -euo pipefail
cd "$(dirname "$0")/../.."
OU_ROOT="${1:-${OU_ROOT:-}}"
if [ -z "$OU_ROOT" ] || [ ! -f "$OU_ROOT/src/train.py" ]; then
  echo "fetch_wheels.sh: no OpenUnlearning checkout at '${OU_ROOT}': pass its folder (bash scripts/gpu/fetch_wheels.sh PATH) or set OU_ROOT, as for the tests" >&2
  exit 2
fi
DEST=.gpu_wheels
PY="${PYTHON:-python3}"
mkdir -p "$DEST" .git/info
grep -qxF "/$DEST/" .git/info/exclude 2>/dev/null || echo "/$DEST/" >> .git/info/exclude
rm -f "$DEST"/*.whl

PLATFORM=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --platform manylinux1_x86_64 --platform any)
# Binary or wheel-only, for the GPU machine's CPython 3.12.
BINARY=(
  tokenizers==0.20.3            # transformers 4.45.1 needs <0.21 (the machine has 0.23)
  pydantic-core==2.50.5         # deepspeed -> pydantic
  numexpr==2.14.2               # lm_eval
  zstandard==0.25.0             # lm_eval
  multiprocess==0.70.16         # datasets (a py312 wheel)
)
PURE=(
  transformers==4.45.1 huggingface-hub==0.29.1 accelerate==0.34.2 peft==0.17.1
  hydra-core==1.3.0 omegaconf==2.4.0 hydra-colorlog==1.2.0 colorlog==6.12.0
  datasets==3.0.1 dill==0.3.8 fsspec==2024.6.1
  nltk==3.10.4 lm_eval==0.4.8 evaluate==0.4.6 chardet==6.0.0.post1 jsonlines==4.0.0
  hjson==3.1.0 pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5
  pytz==2025.2 defusedxml==0.7.1
)
# sdist-only on PyPI: built here into pure-Python wheels (pip's wheel cache makes reruns quick).
SDIST=(antlr4-python3-runtime==4.9.3 rouge-score==0.1.2 sqlitedict==2.1.0 deepspeed==0.15.4)

"$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d "$DEST" "${BINARY[@]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" $(printf '%s\n' "${PURE[@]}" | grep '==')
# deepspeed's setup.py imports torch: build it without isolation, with the ops left to JIT (DS_BUILD_OPS=0).
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "${SDIST[@]}"
# This plugin, from a clean copy of the working tree (a stale build/ folder would leak old modules into the wheel).
SRC=$(mktemp -d)
tar --exclude=./build --exclude=./.venv --exclude="./$DEST" --exclude=./.git --exclude='*.egg-info' -cf - . | tar -xf - -C "$SRC"
"$PY" -m pip wheel -q --no-deps -w "$DEST" "$SRC"
rm -rf "$SRC"

rm -rf "$DEST/open-unlearning"
mkdir -p "$DEST/open-unlearning"
cp -r "$OU_ROOT/src" "$OU_ROOT/configs" "$OU_ROOT/setup.py" "$OU_ROOT/requirements.txt" "$DEST/open-unlearning/"
find "$DEST/open-unlearning" -name __pycache__ -prune -exec rm -rf {} +
(cd "$OU_ROOT" && git rev-parse HEAD 2>/dev/null || echo unknown) > "$DEST/open-unlearning/OU_COMMIT"

ls -l "$DEST"/*.whl | awk '{printf "%9d  %s\n", $5, $9}'
du -sb "$DEST" | awk '{printf "total %.1f MiB (the run tool carries at most 64 MiB with the working tree)\n", $1 / 1048576}'
