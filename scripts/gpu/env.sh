# Source me on the GPU machine (or in a rehearsal venv): installs .gpu_wheels (scripts/gpu/fetch_wheels.sh) offline
# into a private folder put first on PYTHONPATH (no venv: the machine's torch, CUDA and the packages OU's stack
# shares with it stay as they are), and points OU_ROOT at the carried OpenUnlearning copy.
#   source scripts/gpu/env.sh     # then: python scripts/gpu/bench_llama1b.py / smoke_pipeline.py
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export DUET_GPU_SITE="${DUET_GPU_SITE:-/tmp/duet_gpu_site}"
_wheels="${DUET_GPU_WHEELS:-$_repo/.gpu_wheels}"  # another folder of the same wheels (e.g. cp311 builds for a rehearsal)
if [ ! -f "$DUET_GPU_SITE/.installed" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$DUET_GPU_SITE" "$_wheels"/*.whl || { echo "env.sh: FAIL installing .gpu_wheels"; return 1; }
  touch "$DUET_GPU_SITE/.installed"
fi
export PYTHONPATH="$DUET_GPU_SITE${PYTHONPATH:+:$PYTHONPATH}"
export OU_ROOT="${OU_ROOT:-$_repo/.gpu_wheels/open-unlearning}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_DISABLED=true PYTHONUNBUFFERED=1
python3 -c "import torch, transformers; print('env.sh: torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| transformers', transformers.__version__, transformers.__file__)"
