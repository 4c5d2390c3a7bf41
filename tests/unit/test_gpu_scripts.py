"""The prepared GPU scripts' plans: the Llama-3.2-1B-shape benchmark's memory estimate and the smoke pipeline's
overrides (its dry run, which needs OU: tests/integration/test_gpu_scripts_ou.py)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_llama1b_holds_everything_on_an_h100_at_full_depth() -> None:
    sys.path.insert(0, str(REPO / "scripts" / "gpu"))
    try:
        import bench_llama1b
    finally:
        sys.path.remove(str(REPO / "scripts" / "gpu"))
    full = bench_llama1b.held_estimate(16)
    assert 40 * 2**30 < full < 0.7 * 79 * 2**30  # 6 trainers + 2 frozen copies of 1.24B bf16 params: interleaved
    assert bench_llama1b.held_estimate(2) < full


def test_smoke_pipeline_runs_ou_in_bf16_with_sdpa_and_adamw_torch(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts" / "gpu"))
    try:
        import smoke_pipeline
    finally:
        sys.path.remove(str(REPO / "scripts" / "gpu"))
    train, evaluate = smoke_pipeline.overrides(tmp_path / "model", "bfloat16", cuda=True, steps=3)
    for over in (train, evaluate):
        assert "model.model_args.attn_implementation=sdpa" in over
        assert "model.model_args.torch_dtype=bfloat16" in over
    assert {"trainer.args.optim=adamw_torch", "trainer.args.bf16=true", "++trainer.args.max_steps=3"} <= set(train)
    assert "model.model_args.device_map=cuda" in evaluate
    assert not any("use_cpu" in o for o in train)
    cpu_train, cpu_eval = smoke_pipeline.overrides(tmp_path / "model", "float32", cuda=False, steps=2)
    assert "trainer.args.bf16=false" in cpu_train and "++trainer.args.use_cpu=true" in cpu_train
    assert "model.model_args.device_map=cpu" in cpu_eval
    assert set(smoke_pipeline.TRAIN) == {"DUET", "BiDistill", "UNDO"}
