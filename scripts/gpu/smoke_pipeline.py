"""One-call smoke test of the whole pipeline on a GPU: DUET, BiDistill and UNDO through OpenUnlearning's own
``src/train.py``, then OU's TOFU evaluation through ``src/eval.py``, in bfloat16 on CUDA, on a random Llama of
Llama-3.2-1B's shape (a few layers; the 128,256-token vocabulary) and the project's fictitious-author TOFU data laid
out as ``locuslab/TOFU`` (offline). Prints one ``PASS`` / ``FAIL`` line per stage and ``SMOKE: PASS`` when all pass.

    source scripts/gpu/env.sh && python scripts/gpu/smoke_pipeline.py            # on the GPU machine
    python scripts/gpu/smoke_pipeline.py --cpu [--shape llama-3.2-1b-mini]        # the same stages on a CPU

Stages (each a subprocess with its own timeout, all inside ``--budget`` seconds, about 8 minutes by default):
``imports`` (OU's packages and the plugin), ``data+model`` (TOFU layout, tokenizer, random model saved in bf16),
``train DUET`` / ``train BiDistill`` / ``train UNDO`` (``--steps`` optimiser steps each, finite losses, a saved
model that moved), ``eval TOFU`` (forget_Q_A_Prob and forget_Q_A_ROUGE of DUET's model, finite).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CARRIED_OU = REPO / ".gpu_wheels" / "open-unlearning"
METRICS = ["forget_Q_A_Prob", "forget_Q_A_ROUGE"]
DROPPED = ["forget_truth_ratio", "forget_quality", "model_utility", "privleak", "extraction_strength"]  # OU's others
TRAIN = {
    "DUET": ["experiment=unlearn/tofu/duet"],
    "BiDistill": ["experiment=unlearn/tofu/bidistill"],
    "UNDO": [
        "experiment=unlearn/tofu/undo",
        "trainer.method_args.teacher={model}",
        "trainer.method_args.recovery=null",
    ],
}


class Stages:
    """Runs stages inside one time budget and prints a PASS / FAIL line for each."""

    def __init__(self, budget: float, out: Path | None) -> None:
        self.deadline = time.monotonic() + budget
        self.out = out
        self.results: list[tuple[str, bool, str]] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, name: str, ok: bool, detail: str, seconds: float) -> bool:
        line = f"SMOKE {'PASS' if ok else 'FAIL'} {name} ({seconds:.0f} s): {detail}"
        print(line, flush=True)
        self.results.append((name, ok, detail))
        return ok

    def run(self, name: str, cmd: list[str], cwd: Path, env: dict[str, str], check) -> bool:
        """``cmd`` as a subprocess (at most what is left of the budget); ``check(log)`` returns (ok, detail)."""
        left = self.left()
        if left < 10:
            return self.record(name, False, "skipped: time budget spent", 0)
        start = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=left
            )
            log, rc = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as e:
            log, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), None
        if self.out:
            with (self.out / "smoke_stages.log").open("a") as f:  # one file: the run tool brings back 8 at most
                f.write(f"\n===== {name}: {' '.join(cmd)}\n{log}")
        if rc is None:
            ok, detail = False, "timed out (time budget)"
        elif rc != 0:
            tail = [ln for ln in log.strip().splitlines() if ln.strip()][-3:]
            ok, detail = False, f"rc {rc}: " + " | ".join(tail)[-600:]
        else:
            ok, detail = check(log)
        if not ok:
            print(log[-5000:], flush=True)
        return self.record(name, ok, detail, time.monotonic() - start)


def write_data_and_model(ws: Path, shape: str, layers: int, dtype: str) -> str:
    """The fictitious-author TOFU layout in ``ws`` and a random model of ``shape`` (``layers`` layers) with the
    demo's tokenizer in ``ws/model``, saved in ``dtype``."""
    import torch
    from transformers import LlamaForCausalLM

    from duet_plugin.demo.fictitious_authors import build_dataset, write_hub_layout
    from duet_plugin.demo.tiny_llama import build_tokenizer, save_model

    sys.path.insert(0, str(REPO / "scripts"))
    from bench_efficiency import shape_config, shape_line

    ds = build_dataset(n_authors=20, qa_per_author=4, seed=0)
    write_hub_layout(ds, ws)
    texts = [f"{r['question']} {r['answer']}" for rows in ds.configs.values() for r in rows]
    tok = build_tokenizer(texts, vocab_size=800)
    torch.manual_seed(0)
    config = shape_config(shape, tok, layers)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    save_model(model, tok, ws / "model")
    return shape_line(shape, layers, config.vocab_size) + f", saved in {dtype}"


def overrides(model: Path, dtype: str, cuda: bool, steps: int) -> tuple[list[str], list[str]]:
    """OU overrides for train.py and eval.py: the local model in ``dtype`` with sdpa attention, AdamW (torch),
    bf16 autocast when bf16, no reporting, no in-training eval, ``steps`` optimiser steps of 4 pairs."""
    bf16 = str(dtype == "bfloat16").lower()
    model_args = [
        f"model.model_args.pretrained_model_name_or_path={model}",
        f"model.tokenizer_args.pretrained_model_name_or_path={model}",
        "model.model_args.attn_implementation=sdpa",
        f"model.model_args.torch_dtype={dtype}",
    ]
    train = [
        *model_args,
        "trainer.args.optim=adamw_torch",
        f"trainer.args.bf16={bf16}",
        f"trainer.args.bf16_full_eval={bf16}",
        "trainer.args.report_to=none",
        "++trainer.args.warmup_epochs=0",
        "trainer.args.eval_strategy=no",
        "trainer.args.do_eval=false",
        "trainer.args.eval_on_start=false",
        "trainer.args.per_device_train_batch_size=4",
        "trainer.args.gradient_accumulation_steps=1",
        "trainer.args.logging_steps=1",
        "trainer.args.learning_rate=1e-4",
        f"++trainer.args.max_steps={steps}",
        *([] if cuda else ["++trainer.args.use_cpu=true"]),
    ]
    evaluate = [
        *model_args,
        f"model.model_args.device_map={'cuda' if cuda else 'cpu'}",
        *(f"~eval.tofu.metrics.{m}" for m in DROPPED),
        "eval.tofu.batch_size=8",
    ]
    return train, evaluate


def check_train(out: Path, steps: int):
    def check(log: str) -> tuple[bool, str]:
        losses = [float(x) for x in re.findall(r"'loss': ([-\d.e+naif]+)", log)]
        if len(losses) != steps or not all(math.isfinite(v) for v in losses):
            return False, f"losses {losses} (expected {steps} finite)"
        if not (out / "model.safetensors").is_file() and not list(out.glob("model*.safetensors")):
            return False, f"no model saved in {out}"
        speed = re.findall(r"'train_runtime': ([\d.]+)", log)
        return True, f"losses {', '.join(f'{v:.3f}' for v in losses)}; train_runtime {speed[-1] if speed else '?'} s"

    return check


def check_eval(summary: Path):
    def check(log: str) -> tuple[bool, str]:
        if not summary.is_file():
            return False, f"no {summary.name}"
        got = json.loads(summary.read_text())
        bad = [m for m in METRICS if not isinstance(got.get(m), int | float) or not math.isfinite(got[m])]
        if bad:
            return False, f"not finite or missing: {bad} in {got}"
        return True, ", ".join(f"{m} {got[m]:.4f}" for m in METRICS)

    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="rehearse on the CPU (no CUDA needed)")
    parser.add_argument("--shape", default="llama-3.2-1b", help="llama-3.2-1b or llama-3.2-1b-mini")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps per trainer")
    parser.add_argument("--methods", nargs="*", default=list(TRAIN), choices=list(TRAIN))
    parser.add_argument("--budget", type=float, default=480, help="seconds for all stages together")
    parser.add_argument("--ou-root", default=os.environ.get("OU_ROOT") or str(CARRIED_OU))
    parser.add_argument("--workdir", default=None, help="default: a fresh temporary folder")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for the stage logs and the summary")
    args = parser.parse_args(argv)

    ou = Path(args.ou_root).resolve()
    ws = Path(args.workdir or tempfile.mkdtemp(prefix="duet_smoke_")).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_DISABLED": "true",
        "PYTHONUNBUFFERED": "1",
        "HF_DATASETS_CACHE": str(ws / ".hf_datasets_cache"),
    }
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    stages = Stages(args.budget, out)
    py = sys.executable
    print(f"SMOKE workdir {ws}; OU {ou}; {'CPU' if args.cpu else 'CUDA'}, {args.dtype}", flush=True)

    probe = (
        "import sys, torch, transformers, datasets, hydra, omegaconf, accelerate, peft; "
        f"sys.path.insert(0, {str(ou / 'src')!r}); import data, model, trainer, evals; "
        "import duet_plugin, hydra_plugins.duet_plugin; "
        "assert torch.cuda.is_available() or " + str(args.cpu) + ", 'no CUDA'; "
        "print('versions: torch', torch.__version__, '| transformers', transformers.__version__, '| datasets', "
        "datasets.__version__, '| accelerate', accelerate.__version__, '| peft', peft.__version__, "
        "'| cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
    )
    stages.run(
        "imports",
        [py, "-c", probe],
        ws,
        env,
        lambda log: (True, next((ln for ln in log.splitlines() if ln.startswith("versions:")), "")),
    )

    start = time.monotonic()
    try:
        detail = write_data_and_model(ws, args.shape, args.layers, args.dtype)
        stages.record("data+model", True, detail, time.monotonic() - start)
    except Exception as e:  # report and stop: nothing downstream can run
        stages.record("data+model", False, f"{type(e).__name__}: {e}", time.monotonic() - start)
        print("SMOKE: FAIL", flush=True)
        return 1

    train_over, eval_over = overrides(ws / "model", args.dtype, not args.cpu, args.steps)
    for method in args.methods:
        task = f"smoke_{method.lower()}"
        extra = [a.format(model=ws / "model") for a in TRAIN[method]]
        cmd = [py, str(ou / "src" / "train.py"), "--config-name=unlearn.yaml", *extra, f"task_name={task}"]
        stages.run(
            f"train {method}",
            [*cmd, *train_over],
            ws,
            env,
            check_train(ws / "saves" / "unlearn" / task, args.steps),
        )

    trained = ws / "saves" / "unlearn" / f"smoke_{args.methods[0].lower()}"
    evals = ws / "saves" / "eval" / "smoke_eval"
    eval_model = [
        o.replace(str(ws / "model"), str(trained)) if "pretrained_model_name_or_path" in o else o for o in eval_over
    ]
    stages.run(
        "eval TOFU",
        [
            py,
            str(ou / "src" / "eval.py"),
            "experiment=eval/tofu/default",
            "task_name=smoke_eval",
            f"paths.output_dir={evals}",
            *eval_model,
        ],
        ws,
        env,
        check_eval(evals / "TOFU_SUMMARY.json"),
    )

    ok = all(passed for _, passed, _ in stages.results)
    if out:
        (out / "smoke_summary.json").write_text(
            json.dumps([dict(zip(("stage", "pass", "detail"), r, strict=True)) for r in stages.results], indent=1)
        )
    print(f"SMOKE: {'PASS' if ok else 'FAIL'} ({len(stages.results)} stages, {args.budget - stages.left():.0f} s)")
    if not args.workdir:
        shutil.rmtree(ws, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
