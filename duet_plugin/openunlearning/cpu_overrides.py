"""Hydra overrides (and the environment) that make OU's scripts run on a CPU machine, offline, on a local model.

Measured on OU's snapshot (``d3d7cf9``): each one fixes a concrete failure
(flash-attention, bf16, bitsandbytes' paged optimizer, ``warmup_epochs`` dividing by the GPU count, CUDA device maps,
the in-training eval that would reach the Hub).
"""

from __future__ import annotations

from pathlib import Path


def offline_env(datasets_cache: str | Path, threads: int | None = None) -> dict[str, str]:
    """Environment variables for OU's scripts without a hub: offline Hugging Face libraries, ``datasets``' cache in
    ``datasets_cache`` (one per data folder: configs of the same name are cached by name), and with ``threads`` the
    torch/MKL thread count."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_CACHE": str(datasets_cache),
    }
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def model_overrides(model_path: str | Path) -> list[str]:
    """Load a local model and tokenizer in float32 with the default attention."""
    return [
        f"model.model_args.pretrained_model_name_or_path={model_path}",
        f"model.tokenizer_args.pretrained_model_name_or_path={model_path}",
        "~model.model_args.attn_implementation",
        "model.model_args.torch_dtype=float32",
    ]


def train_overrides(model_path: str | Path) -> list[str]:
    """For ``src/train.py`` (finetune and unlearn)."""
    return [
        *model_overrides(model_path),
        "trainer.args.optim=adamw_torch",
        "trainer.args.bf16=false",
        "trainer.args.bf16_full_eval=false",
        "trainer.args.report_to=none",
        "++trainer.args.warmup_epochs=0",
        "trainer.args.eval_strategy=no",
        "trainer.args.do_eval=false",
        "trainer.args.eval_on_start=false",
    ]


def eval_overrides(model_path: str | Path) -> list[str]:
    """For ``src/eval.py``."""
    return [*model_overrides(model_path), "model.model_args.device_map=cpu"]
