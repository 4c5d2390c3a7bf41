"""Reproduction grids: DUET, BiDistill, UNDO and OU's baselines on one benchmark, with the same model, data and
schedule, then OU's evaluation and the plugin's robustness suite on every result.

A grid is data: a list of :class:`Step` (argv, env, cwd, output folder, what must exist first) built without
touching a framework, so it can be printed (``--dry-run``), tested and run in order. The ``scripts/reproduce_*.py``
files are thin wrappers around :func:`main`.

Profiles:

- ``gpu`` (default) mirrors OU's ``scripts/tofu_unlearn.sh`` / ``scripts/muse_unlearn.sh``: the same model,
  ``accelerate launch`` config (DeepSpeed ZeRO-3), per-device batch size, gradient accumulation, and the
  experiment's learning rate and epochs for every method. DUET, BiDistill and UNDO run under the same
  ``accelerate launch`` on the same GPUs as OU's baselines (the plugin's trainers support DDP and DeepSpeed ZeRO-3),
  with the same effective batch; with ``--num-gpus`` other than OU's 2 every method gets the gradient accumulation
  that keeps it. UNDO keeps its experiment's learning rate and step budget. A method that uses LoRA
  (:attr:`Method.lora`; LoRA is refused under ZeRO-3) runs as one process on GPU 0 with the accumulation that keeps
  the batch. OU has no WMDP script: its ``experiment=unlearn/wmdp/default`` (RMU, one GPU, 80 steps of 16) is used
  as it stands, and every WMDP method keeps its experiment's schedule, as one process.
- ``cpu`` runs the same grid on a finished ``duet-plugin demo`` folder, with the demo's fine-tuned model, its
  unlearning schedule and the CPU overrides, every command as one process. TOFU uses the demo's TOFU-layout data.
  MUSE and WMDP use stand-ins written into the demo folder from the demo's fictitious authors
  (:mod:`duet_plugin.demo.benchmark_layouts`): the forget side is the demo's forget authors, the retain side the
  others. MUSE gets ``muse-bench/MUSE-{News,Books}`` and an extra step that evaluates the demo's retain-only model
  on it, whose ``MUSE_EVAL.json`` is every evaluation's ``retain_logs_path`` (privleak's reference), as OU's
  scripts use the retrained model's logs (on WMDP the retain-only model is evaluated too, as the floor of the forget
  task). WMDP gets ``data/wmdp/wmdp-corpora`` and, since WMDP and MMLU are lm-eval
  tasks on the Hub, two local lm-eval tasks that stand in for them (``demo_forget_mcq``, ``demo_general_mcq``),
  read through the plugin's ``RobustLMEvalEvaluator`` (``include_path``; without attacks it is OU's lm-eval
  evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from duet_plugin.demo.benchmark_layouts import (
    DEMO_FORGET_TASK,
    DEMO_GENERAL_TASK,
    DEMO_MCQ_DIR,
    WMDP_CORPORA,
    demo_muse_files,
    demo_wmdp_files,
    write_files,
)
from duet_plugin.demo.demo_data import REFUSAL
from duet_plugin.openunlearning.cpu_overrides import eval_overrides, train_overrides

BENCHMARKS = ("tofu", "muse", "wmdp")
STAGES = ("train", "eval", "robustness")
PROFILES = ("gpu", "cpu")
OURS = ("DUET", "BiDistill", "UNDO")
#: The label of the model before unlearning (evaluated, never trained).
ORIGINAL = "original"
#: Turn off OU's in-training evaluation: every model is evaluated by the separate eval step, as in OU's scripts
#: (community/methods/*/run.sh pass the first two for the same reason).
NO_TRAIN_EVAL = ("trainer.args.eval_strategy=no", "trainer.args.eval_on_start=false", "trainer.args.do_eval=false")
#: The attack metrics of eval/{tofu,muse}/robustness whose children generate text.
TOFU_ATTACKS = ("relearn_attack", "prompt_attack", "prefill_attack", "quantization_attack")
#: The OU model config of the CPU profile: its chat template settings fit the demo model's ChatML tokenizer (the
#: demo model learnt its facts as chat turns; Llama-2-7b-hf's "Question: ... Answer:" tags would be new to it).
CPU_MODEL = "Llama-3.2-1B-Instruct"
#: The label of the demo's retain-only model in the CPU MUSE and WMDP grids (evaluated, never trained).
RETAIN_ONLY = "retain-only"
#: Raw-text chunk length of the CPU MUSE grid's MUSE_forget / MUSE_retain (OU: 2048; the demo model has 1024
#: positions and was trained on sequences of under 200 tokens).
CPU_MUSE_MAX_LENGTH = 512
#: MUSE knowmem datasets in eval/muse/{default,robustness} (metric node, dataset), run zero-shot on the CPU: the
#: demo model was fine-tuned on single-turn QA and answers nothing after in-context turns (measured: empty answers).
MUSE_KNOWMEM = {
    "default": (
        ("forget_knowmem_ROUGE", "MUSE_forget_knowmem"),
        ("retain_knowmem_ROUGE", "MUSE_retain_knowmem"),
    ),
    "robustness": (
        *((f"{a}.pre_compute.forget_knowmem_ROUGE", "MUSE_forget_knowmem") for a in TOFU_ATTACKS),
        ("over_refusal.pre_compute.retain_knowmem_ROUGE", "MUSE_retain_knowmem"),
        ("performance_shift.pre_compute.forget_knowmem_ROUGE", "MUSE_forget_knowmem"),
        ("performance_shift.pre_compute.retain_knowmem_ROUGE", "MUSE_retain_knowmem"),
    ),
}


@dataclass(frozen=True)
class Method:
    """One unlearning method: its OU experiment, the ``trainer=`` override (None: the experiment's own), where its
    setting comes from, and whether it trains LoRA adapters (then it runs as one process: OU's accelerate config is
    DeepSpeed ZeRO-3, under which the plugin refuses LoRA). No method of the grids uses LoRA by default."""

    name: str
    experiment: str
    trainer: str | None = None
    source: str = ""
    lora: bool = False


def _ou(name: str, bench: str, source: str, trainer: str | None = None, experiment: str = "default") -> Method:
    return Method(name, f"unlearn/{bench}/{experiment}", trainer or name, source)


def _ours(bench: str) -> list[Method]:
    return [Method(n, f"unlearn/{bench}/{n.lower()}", None, "this plugin") for n in OURS]


METHODS: dict[str, dict[str, Method]] = {
    "tofu": {
        m.name: m
        for m in [
            _ou("GradAscent", "tofu", "OU scripts/tofu_unlearn.sh"),
            _ou("GradDiff", "tofu", "OU scripts/tofu_unlearn.sh"),
            _ou("NPO", "tofu", "OU scripts/tofu_unlearn.sh"),
            _ou("SimNPO", "tofu", "OU docs/repro.md (TOFU table)"),
            _ou("RMU", "tofu", "OU scripts/tofu_unlearn.sh"),
            _ou("UNDIAL", "tofu", "OU community/methods/UNDIAL"),
            _ou("IdkDPO", "tofu", "OU scripts/tofu_unlearn.sh (DPO on unlearn/tofu/idk)", "DPO", "idk"),
            _ou("CEU", "tofu", "OU community/methods/CEU"),
            _ou("SatImp", "tofu", "OU community/methods/SatImp"),
            _ou("WGA", "tofu", "OU community/methods/WGA"),
            *_ours("tofu"),
        ]
    },
    "muse": {
        m.name: m
        for m in [
            _ou("GradAscent", "muse", "OU scripts/muse_unlearn.sh"),
            _ou("GradDiff", "muse", "OU scripts/muse_unlearn.sh"),
            _ou("NPO", "muse", "OU scripts/muse_unlearn.sh"),
            _ou("SimNPO", "muse", "OU scripts/muse_unlearn.sh"),
            _ou("RMU", "muse", "OU docs/repro.md (MUSE table)"),
            *_ours("muse"),
        ]
    },
    "wmdp": {
        m.name: m
        for m in [
            Method("RMU", "unlearn/wmdp/default", None, "OU configs/experiment/unlearn/wmdp/default.yaml"),
            *_ours("wmdp"),
        ]
    },
}

_NO_MUSE = (
    "OU runs it on TOFU only (no MUSE script, config or reported result; its settings in community/methods were "
    "tuned on TOFU)"
)
_NO_WMDP = (
    "OU's only WMDP experiment (unlearn/wmdp/default) carries RMU's method_args (steering_coeff, module_regex, ...), "
    "which other trainers reject, and OU has no WMDP script or result for it"
)
#: Methods the issue names that a benchmark's grid leaves out, and why.
SKIPPED: dict[str, dict[str, str]] = {
    "tofu": {},
    "muse": {
        "IdkDPO": "it needs TOFU-format QA pairs with 'I don't know' answers (QAwithIdkDataset); MUSE's forget "
        "data is raw text and OU ships no MUSE idk data",
        **{n: _NO_MUSE for n in ("UNDIAL", "CEU", "SatImp", "WGA")},
    },
    "wmdp": {
        **{n: _NO_WMDP for n in ("GradAscent", "GradDiff", "NPO", "SimNPO", "UNDIAL", "CEU", "SatImp", "WGA")},
        "IdkDPO": "it needs TOFU-format QA pairs with 'I don't know' answers; WMDP's corpora are raw text",
    },
}
#: Which unlearned models UNDO robustifies by default (the UNDO paper's WMDP run starts from RMU).
UNDO_TEACHERS = {"tofu": ("DUET", "GradDiff"), "muse": ("DUET", "GradDiff"), "wmdp": ("DUET", "RMU")}

TOFU_SPLITS = {
    "forget01": {"forget_split": "forget01", "holdout_split": "holdout01", "retain_split": "retain99"},
    "forget05": {"forget_split": "forget05", "holdout_split": "holdout05", "retain_split": "retain95"},
    "forget10": {"forget_split": "forget10", "holdout_split": "holdout10", "retain_split": "retain90"},
}
SPLITS: dict[str, tuple[str, ...]] = {
    "tofu": tuple(TOFU_SPLITS),
    "muse": ("News", "Books"),
    "wmdp": ("cyber", "bio"),
}
DEFAULT_MODELS = {"tofu": "Llama-3.2-1B-Instruct", "muse": "Llama-2-7b-hf", "wmdp": "zephyr-7b-beta"}
EVALUATORS = {"tofu": "TOFU", "muse": "MUSE", "wmdp": "LMEval"}
#: The ``eval.<key>`` node of each benchmark's evaluator.
EVAL_NODES = {"tofu": "tofu", "muse": "muse", "wmdp": "lm_eval"}


@dataclass(frozen=True)
class GpuSchedule:
    """The launch and batch settings of OU's script for a benchmark (None: keep the experiment's). The effective
    batch is ``per_device_train_batch_size x gradient_accumulation_steps x gpus`` (OU's scripts: 2 GPUs)."""

    per_device_train_batch_size: int | None
    gradient_accumulation_steps: int | None
    accelerate: bool
    extra: tuple[str, ...] = ()
    gpus: int = 2


GPU_SCHEDULES = {
    # scripts/tofu_unlearn.sh: 2 GPUs x 4 x 4 = 32 per step, DeepSpeed ZeRO-3 via configs/accelerate.
    "tofu": GpuSchedule(
        4, 4, True, ("trainer.args.ddp_find_unused_parameters=true", "trainer.args.gradient_checkpointing=true")
    ),
    # scripts/muse_unlearn.sh: 2 GPUs x 4 x 8 = 64 per step.
    "muse": GpuSchedule(
        4, 8, True, ("trainer.args.ddp_find_unused_parameters=true", "trainer.args.gradient_checkpointing=true")
    ),
    # No OU script: experiment/unlearn/wmdp/default as it stands (1 x 16 on one GPU).
    "wmdp": GpuSchedule(None, None, False, gpus=1),
}


@dataclass(frozen=True)
class Step:
    """One command of the grid. ``needs``: paths that must exist before it runs (made by earlier steps)."""

    kind: str
    run: str
    argv: tuple[str, ...]
    cwd: Path
    run_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    needs: tuple[Path, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.kind} {self.run}"

    def shell(self) -> str:
        """The command as one shell line (``cd CWD && VAR=... argv``), quoted so that it can be pasted."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"cd {shlex.quote(str(self.cwd))} && " + (f"{env} " if env else "") + shlex.join(self.argv)

    @property
    def log(self) -> Path:
        return self.run_dir / f"reproduce_{self.kind}.log"

    @property
    def marker(self) -> Path:
        """Written after the command exits 0; holds the command, so a changed command runs again."""
        return self.run_dir / f"reproduce_{self.kind}.done"


@dataclass
class Grid:
    """The steps in run order, files to write before the first step, and what the user must provide."""

    benchmark: str
    profile: str
    steps: list[Step]
    files: dict[Path, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        """The ``--dry-run`` text: notes, files, then every command."""
        lines = [f"# {self.benchmark} reproduction grid, profile {self.profile}: {len(self.steps)} commands"]
        lines += [f"# note: {n}" for n in self.notes]
        lines += [f"# writes {path}" for path in self.files]
        for i, step in enumerate(self.steps, 1):
            lines += ["", f"# [{i}/{len(self.steps)}] {step.name}", step.shell()]
        return "\n".join(lines) + "\n"


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def resolve_methods(benchmark: str, names: Iterable[str] | None) -> list[Method]:
    """The benchmark's methods named in ``names`` (case and dashes ignored: ``ce-u`` is ``CEU``), in the grid's
    order; ``None``: all of them. Raises ``ValueError`` naming the valid ones."""
    table = METHODS[benchmark]
    if names is None:
        return list(table.values())
    valid = ", ".join(table)
    by_key = {_key(n): n for n in table}
    skipped = {_key(n): (n, why) for n, why in SKIPPED[benchmark].items()}
    chosen = set()
    for name in names:
        key = _key(name)
        if key in by_key:
            chosen.add(by_key[key])
        elif key in skipped:
            real, why = skipped[key]
            raise ValueError(f"{real} is not run on {benchmark}: {why}. Valid methods for {benchmark}: {valid}.")
        else:
            raise ValueError(f"Unknown method {name!r} for {benchmark}; valid methods: {valid}.")
    return [m for n, m in table.items() if n in chosen]


def resolve_splits(benchmark: str, names: Iterable[str] | None) -> list[str]:
    valid = SPLITS[benchmark]
    if names is None:
        return list(valid)
    by_key = {s.lower(): s for s in valid}
    out = []
    for name in names:
        if name.lower() not in by_key:
            raise ValueError(f"Unknown split {name!r} for {benchmark}; valid splits: {', '.join(valid)}.")
        if by_key[name.lower()] not in out:
            out.append(by_key[name.lower()])
    return out


@dataclass(frozen=True)
class DemoContext:
    """What the CPU profile reuses from a finished ``duet-plugin demo`` folder."""

    workdir: Path
    model: Path
    demo_split: str
    forget_authors: Mapping[str, tuple[str, ...]]
    num_layers: int
    unlearn_epochs: int = 10
    unlearn_lr: float = 1e-3
    unlearn_batch_size: int = 8
    seed: int = 0
    eval_max_new_tokens: int = 32
    threads: int = 2

    @property
    def retain_logs(self) -> Path:
        """The demo's retain-only reference, evaluated on ``demo_split`` (forget_quality needs it)."""
        return self.workdir / "saves" / "eval" / "demo_retain" / "TOFU_EVAL.json"

    @property
    def retain_model(self) -> Path:
        """The demo's retain-only model (fine-tuned on the retain split's facts only)."""
        return self.workdir / "saves" / "finetune" / "demo_retain"


def load_demo_context(workdir: str | Path, threads: int = 2) -> DemoContext:
    """Read a finished demo folder (its marker, fine-tuned model, data and retain reference)."""
    from duet_plugin.demo.pipeline import MARKER, DemoSettings  # imports torch: only for the CPU profile

    w = Path(workdir).expanduser().resolve()
    if not (w / MARKER).is_file():
        raise FileNotFoundError(f"{w} is not a duet-plugin demo folder; run `duet-plugin demo --workdir {w}` first.")
    model = w / "saves" / "finetune" / "demo_full"
    retain_logs = w / "saves" / "eval" / "demo_retain" / "TOFU_EVAL.json"
    for path in (model / "config.json", retain_logs):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the demo in {w} did not finish; rerun `duet-plugin demo`.")
    num_layers = int(json.loads((model / "config.json").read_text())["num_hidden_layers"])
    authors = {}
    for split in SPLITS["tofu"]:
        rows = json.loads((w / "locuslab" / "TOFU" / f"{split}.json").read_text())
        authors[split] = tuple(dict.fromkeys(r["author"] for r in rows))
    settings = DemoSettings()
    demo_split = settings.forget_split
    hydra_cfg = retain_logs.parent / ".hydra" / "config.yaml"
    if hydra_cfg.is_file():
        import yaml

        demo_split = yaml.safe_load(hydra_cfg.read_text()).get("forget_split", demo_split)
    return DemoContext(
        workdir=w,
        model=model,
        demo_split=demo_split,
        forget_authors=authors,
        num_layers=num_layers,
        unlearn_epochs=settings.unlearn_epochs,
        unlearn_lr=settings.unlearn_lr,
        unlearn_batch_size=settings.unlearn_batch_size,
        seed=settings.seed,
        eval_max_new_tokens=settings.eval_max_new_tokens,
        threads=threads,
    )


@dataclass
class GridOptions:
    """Everything that shapes a grid (the CLI's arguments)."""

    benchmark: str
    ou_root: Path
    output_root: Path
    profile: str = "gpu"
    methods: list[Method] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    stages: tuple[str, ...] = STAGES
    undo_teachers: tuple[str, ...] = ()
    model: str | None = None
    model_path: str | None = None
    num_gpus: int = 2
    retain_logs_dir: Path | None = None
    main_process_port: int | None = None
    python: str = "python"
    demo: DemoContext | None = None
    relearn_steps: int = 10
    relearn_lrs: tuple[float, ...] = (1e-4, 1e-3)


class _Builder:
    """Builds one grid; see :func:`build_grid`."""

    def __init__(self, o: GridOptions) -> None:
        self.o = o
        self.bench = o.benchmark
        self.model = o.model or (CPU_MODEL if o.profile == "cpu" else DEFAULT_MODELS[self.bench])
        self.steps: list[Step] = []
        self.files: dict[Path, str] = {}
        self.notes: list[str] = []

    # -- names and paths -----------------------------------------------------------------------------------
    def task(self, split: str, label: str) -> str:
        model = "demo" if self.o.profile == "cpu" else self.model
        return f"{self.bench}_{model}_{split}_{label}"

    def run_dir(self, split: str, label: str) -> Path:
        return self.o.output_root / self.task(split, label)

    def original_model(self, split: str) -> str:
        if self.o.profile == "cpu":
            return str(self.o.demo.model)
        if self.o.model_path:
            return self.o.model_path
        return {
            "tofu": f"open-unlearning/tofu_{self.model}_full",
            "muse": f"muse-bench/MUSE-{split}_target",
            "wmdp": "HuggingFaceH4/zephyr-7b-beta",
        }[self.bench]

    def retain_logs(self, split: str) -> Path | None:
        """OU's reference-model logs (``python setup_data.py --eval_logs``); the demo's own on the CPU (TOFU: its
        retain-only evaluation; MUSE: the grid's evaluation of its retain-only model)."""
        if self.o.profile == "cpu":
            if self.bench == "muse":
                return self.run_dir(split, RETAIN_ONLY) / "evals" / "MUSE_EVAL.json"
            if self.bench == "wmdp":
                return None
            return self.o.demo.retain_logs if split == self.o.demo.demo_split else None
        root = self.o.retain_logs_dir or self.o.ou_root / "saves" / "eval"
        if self.bench == "tofu":
            return root / f"tofu_{self.model}_{TOFU_SPLITS[split]['retain_split']}" / "TOFU_EVAL.json"
        if self.bench == "muse":
            return root / f"muse_{self.model}_{split}_retrain" / "MUSE_EVAL.json"
        return None

    def split_args(self, split: str, train: bool) -> list[str]:
        if self.bench != "tofu":
            return [f"data_split={split}"]
        s = TOFU_SPLITS[split]
        # Training takes forget/retain (as OU's scripts; unlearn/tofu/idk has no holdout_split), eval forget/holdout.
        keys = ("forget_split", "retain_split") if train else ("forget_split", "holdout_split")
        return [f"{k}={s[k]}" for k in keys]

    # -- launchers -------------------------------------------------------------------------------------------
    def cpu_env(self) -> dict[str, str]:
        t = str(self.o.demo.threads)
        return {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": t,
            "MKL_NUM_THREADS": t,
            "HF_DATASETS_CACHE": str(self.o.demo.workdir / ".hf_datasets_cache"),
        }

    def launcher(self, script: str, n: int) -> tuple[list[str], dict[str, str]]:
        """argv prefix and env: ``accelerate launch`` on ``n`` GPUs as OU's scripts, or one process."""
        if self.o.profile == "cpu":
            return [self.o.python, str(self.o.ou_root / "src" / f"{script}.py")], self.cpu_env()
        if n > 1:
            argv = ["accelerate", "launch", "--config_file", "configs/accelerate/default_config.yaml"]
            argv += ["--num_processes", str(n)]
            if self.o.main_process_port is not None:
                argv += ["--main_process_port", str(self.o.main_process_port)]
            return [*argv, f"src/{script}.py"], {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(n))}
        return [self.o.python, f"src/{script}.py"], {"CUDA_VISIBLE_DEVICES": "0"}

    def cwd(self) -> Path:
        # OU's relative paths (data/idk.jsonl, data/wmdp, configs/accelerate) resolve against the OU root; the
        # demo's TOFU-layout data resolves against the demo folder.
        return self.o.demo.workdir if self.o.profile == "cpu" else self.o.ou_root

    def add(self, kind: str, run: str, script: str, args: list[str], n: int = 1, needs: Sequence[Path] = ()) -> None:
        if kind not in self.o.stages:
            return
        prefix, env = self.launcher(script, n)
        extra = ["--config-name=unlearn.yaml"] if script == "train" else []
        run_dir = self.o.output_root / run
        self.steps.append(Step(kind, run, (*prefix, *extra, *args), self.cwd(), run_dir, env, tuple(needs)))

    # -- training ----------------------------------------------------------------------------------------------
    def processes(self, method: Method) -> int:
        """Training processes: ``num_gpus`` under accelerate for every method where OU's script uses accelerate;
        one on the CPU, for WMDP (OU runs it on one GPU) and for a LoRA method (refused under ZeRO-3)."""
        if self.o.profile == "cpu" or method.lora or not GPU_SCHEDULES[self.bench].accelerate:
            return 1
        return self.o.num_gpus

    def batch_args(self, method: Method) -> list[str]:
        """OU's script's per-device batch for every method, with the accumulation that keeps its effective batch on
        however many processes run (UNDO keeps its experiment's learning rate and step budget). On the CPU: the
        demo's unlearning schedule (10 epochs; WMDP's experiments' 80-step budget is lifted so the epochs count)."""
        if self.o.profile == "cpu":
            if method.name == "UNDO":  # scripts/demo_undo_relearn.py's schedule
                return [
                    "trainer.method_args.recovery_eval_steps=25",
                    "trainer.args.max_steps=500",
                    "trainer.args.learning_rate=0.001",
                    "trainer.args.per_device_train_batch_size=32",
                    "trainer.args.gradient_accumulation_steps=1",
                    "trainer.args.warmup_steps=20",
                    "trainer.args.logging_steps=25",
                    f"trainer.args.seed={self.o.demo.seed}",
                ]
            d = self.o.demo
            return [
                f"trainer.args.num_train_epochs={d.unlearn_epochs}",
                *(["trainer.args.max_steps=-1"] if self.bench == "wmdp" else []),
                f"trainer.args.learning_rate={d.unlearn_lr}",
                f"trainer.args.per_device_train_batch_size={d.unlearn_batch_size}",
                "trainer.args.gradient_accumulation_steps=1",
                f"trainer.args.seed={d.seed}",
            ]
        sched = GPU_SCHEDULES[self.bench]
        if sched.per_device_train_batch_size is None:
            return []
        steps = sched.gradient_accumulation_steps * sched.gpus
        n = self.processes(method)
        if steps % n:
            raise ValueError(
                f"OU's {self.bench} batch ({sched.per_device_train_batch_size} per device x {steps} over all GPUs) "
                f"does not split over {n} GPUs; use --num-gpus dividing {steps}."
            )
        accumulation = steps // n
        return [
            f"trainer.args.per_device_train_batch_size={sched.per_device_train_batch_size}",
            f"trainer.args.gradient_accumulation_steps={accumulation}",
            *sched.extra,
        ]

    def method_args(self, method: Method, split: str) -> list[str]:
        """Per-method overrides the setting needs (CPU: the demo's DUET prefix, RMU's layers, the idk answers, MUSE's
        chunk length)."""
        if self.o.profile != "cpu":
            return []
        d = self.o.demo
        if method.name in ("DUET", "BiDistill"):
            # As the demo's DUET run: the demo model learnt to follow this instruction in the user turn. On the MUSE
            # and WMDP stand-ins the forget side is the demo's own forget split.
            authors = d.forget_authors[split if self.bench == "tofu" else d.demo_split]
            concepts = ",".join(json.dumps(a) for a in authors)
            return [
                "trainer.method_args.prefix.name=never_heard_of",
                "trainer.method_args.prefix.placement=user",
                f"trainer.method_args.prefix.concepts=[{concepts}]",
            ]
        out = []
        if self.bench == "muse":  # OU's baselines and UNDO read MUSE_forget / MUSE_retain raw-text chunks
            out += [
                f"data.forget.MUSE_forget.args.max_length={CPU_MUSE_MAX_LENGTH}",
                f"data.retain.MUSE_retain.args.max_length={CPU_MUSE_MAX_LENGTH}",
            ]
        if method.name == "RMU":  # OU's default steers layer 7 of 16; the demo model has num_layers
            layer = max(0, d.num_layers // 2 - 1)
            out.append(f"trainer.method_args.module_regex=model\\.layers\\.{layer}")
            if self.bench == "wmdp":  # unlearn/wmdp/default trains the MLPs of layers 5-7 around layer 7
                layers = "|".join(str(i) for i in range(max(0, layer - 2), layer + 1))
                out.append(
                    f'trainer.method_args.trainable_params_regex=["model\\.layers\\.({layers})\\.mlp\\.down_proj\\.weight"]'
                )
        if method.name == "IdkDPO":
            idk = self.o.output_root / "idk.jsonl"
            self.files[idk] = REFUSAL + "\n"
            out.append(f"data.forget.TOFU_QA_forget_idk.args.idk_path={idk}")
        return out

    def train(self, method: Method, split: str, label: str, teacher: Path | None = None) -> Path:
        run = self.task(split, label)
        out = self.o.output_root / run
        args = [f"experiment={method.experiment}"]
        if method.trainer:
            args.append(f"trainer={method.trainer}")
        args += [f"task_name={run}", f"model={self.model}", *self.split_args(split, train=True)]
        if self.o.profile == "cpu":
            args += [*train_overrides(self.o.demo.model), "model.template_args.system_prompt=null"]
        else:
            args.append(f"model.model_args.pretrained_model_name_or_path={self.original_model(split)}")
            args += NO_TRAIN_EVAL
        logs = self.retain_logs(split)
        if logs is not None:
            args.append(f"retain_logs_path={logs}")
        args += self.batch_args(method) + self.method_args(method, split)
        if teacher is not None:
            args.append(f"trainer.method_args.teacher={teacher}")
        args.append(f"paths.output_dir={out}")
        self.add("train", run, "train", args, self.processes(method), [teacher] if teacher else [])
        return out

    # -- evaluation ------------------------------------------------------------------------------------------
    def eval_args(
        self, split: str, run: str, model: str | Path, out: Path, robustness: bool, retain_logs: bool = True
    ) -> list[str]:
        kind = "robustness" if robustness else "default"
        args = [f"experiment=eval/{self.bench}/{kind}", f"task_name={run}", f"model={self.model}"]
        args += self.split_args(split, train=False)
        # OU would otherwise reuse the metrics an earlier run left in the folder (e.g. before a retrained model).
        args.append(f"eval.{EVAL_NODES[self.bench]}.overwrite=true")
        if self.o.profile == "cpu":
            args += [*eval_overrides(model), "model.template_args.system_prompt=null"]
            args += {"tofu": self.cpu_tofu_eval, "muse": self.cpu_muse_eval, "wmdp": self.cpu_wmdp_eval}[self.bench](
                robustness
            )
        else:
            args.append(f"model.model_args.pretrained_model_name_or_path={model}")
        logs = self.retain_logs(split) if retain_logs else None
        if logs is not None:
            args.append(f"retain_logs_path={logs}")
        return [*args, f"paths.output_dir={out}"]

    def relearn_args(self, node: str) -> list[str]:
        """The CPU profile's relearning attack (scripts/demo_robustness.py's steps and learning rates)."""
        lrs = ",".join(f"{lr:g}" for lr in self.o.relearn_lrs)
        return [f"{node}.steps={self.o.relearn_steps}", f"{node}.learning_rates=[{lrs}]"]

    def cpu_tofu_eval(self, robustness: bool) -> list[str]:
        n = self.o.demo.eval_max_new_tokens
        rouge = ["eval.tofu.metrics.forget_Q_A_ROUGE"] + [
            f"eval.tofu.metrics.model_utility.pre_compute.{k}_Q_A_ROUGE" for k in ("retain", "ra", "wf")
        ]
        args = [f"{m}.generation_args.max_new_tokens={n}" for m in rouge]
        if robustness:  # as scripts/demo_robustness.py
            args += [
                f"eval.tofu.metrics.{a}.pre_compute.forget_Q_A_ROUGE.generation_args.max_new_tokens={n}"
                for a in TOFU_ATTACKS
            ]
            args += [
                "eval.tofu.metrics.performance_shift.pre_compute.forget_Q_A_PARA_ROUGE.generation_args."
                f"max_new_tokens={n}",
                *self.relearn_args("eval.tofu.metrics.relearn_attack"),
            ]
        return args

    def cpu_muse_eval(self, robustness: bool) -> list[str]:
        """knowmem zero-shot (see :data:`MUSE_KNOWMEM`), the demo's relearning attack."""
        nodes = MUSE_KNOWMEM["default"] + (MUSE_KNOWMEM["robustness"] if robustness else ())
        args = [f"eval.muse.metrics.{m}.datasets.{d}.args.few_shot_dataset_hf_args=null" for m, d in nodes]
        if robustness:
            args += self.relearn_args("eval.muse.metrics.relearn_attack")
        return args

    def cpu_wmdp_eval(self, robustness: bool) -> list[str]:
        """The demo's lm-eval stand-ins through RobustLMEvalEvaluator (OU's LMEvalEvaluator has no include_path;
        without attacks the plugin's evaluator is OU's evaluation), in the demo model's chat format."""
        args = [] if robustness else ["eval=lm_eval_robust", "eval.lm_eval.attacks=null"]
        args += [
            f"eval.lm_eval.tasks=[{DEMO_FORGET_TASK},{DEMO_GENERAL_TASK}]",
            f"eval.lm_eval.include_path={self.o.demo.workdir / DEMO_MCQ_DIR}",
            f"eval.lm_eval.forget_tasks=[{DEMO_FORGET_TASK}]",
            "eval.lm_eval.simple_evaluate_args.apply_chat_template=true",
        ]
        if robustness:
            args += self.relearn_args("eval.lm_eval.attacks.relearn")
        return args

    def evaluate(
        self, split: str, label: str, model: str | Path, trained: bool, kinds: Sequence[str] = ("eval", "robustness")
    ) -> None:
        run = self.task(split, label)
        run_dir = self.o.output_root / run
        needs = [Path(model)] if trained else []
        # The retain-only model is the reference: it is evaluated without one (OU: privleak against 0.5).
        reference = label != RETAIN_ONLY
        logs = self.retain_logs(split) if reference and self.o.profile == "cpu" and self.bench == "muse" else None
        if logs is not None:  # made by this grid's retain-only step
            needs.append(logs)
        if "eval" in kinds:
            self.add(
                "eval", run, "eval", self.eval_args(split, run, model, run_dir / "evals", False, reference), 1, needs
            )
        if "robustness" not in kinds:
            return
        args = self.eval_args(split, run, model, run_dir / "evals_robustness", True, reference)
        if self.bench != "wmdp" and label != ORIGINAL:
            # The original model's logs give the relearning recovery and the performance shift.
            original = self.run_dir(split, ORIGINAL) / "evals_robustness" / f"{EVALUATORS[self.bench]}_EVAL.json"
            args.insert(-1, f"original_logs_path={original}")
            needs = [*needs, original]
        self.add("robustness", run, "eval", args, 1, needs)

    # -- the grid --------------------------------------------------------------------------------------------
    def build(self) -> Grid:
        o = self.o
        plain = [m for m in o.methods if m.name != "UNDO"]
        undo = next((m for m in o.methods if m.name == "UNDO"), None)
        if o.profile == "cpu" and self.bench in ("muse", "wmdp"):
            write = demo_muse_files if self.bench == "muse" else demo_wmdp_files
            self.files.update(write(o.demo.workdir, o.demo.demo_split, o.splits))
        for split in o.splits:
            # On the CPU MUSE grid the retain-only model's evaluation is privleak's reference (as the retrained
            # model's logs in OU's scripts), so it comes first; its robustness needs the original's logs. On WMDP
            # it is the floor the forget task is read against (a model that never saw the forget facts).
            retain_only = o.profile == "cpu" and self.bench in ("muse", "wmdp")
            if retain_only:
                self.evaluate(split, RETAIN_ONLY, o.demo.retain_model, trained=False, kinds=("eval",))
            self.evaluate(split, ORIGINAL, self.original_model(split), trained=False)
            if retain_only:
                self.evaluate(split, RETAIN_ONLY, o.demo.retain_model, trained=False, kinds=("robustness",))
            outputs = {}
            for method in plain:
                outputs[method.name] = self.train(method, split, method.name)
                self.evaluate(split, method.name, outputs[method.name], trained=True)
            if undo is None:
                continue
            for teacher in o.undo_teachers:
                path = outputs.get(teacher) or self.run_dir(split, teacher)
                label = f"UNDO-{teacher}"
                out = self.train(undo, split, label, teacher=path)
                self.evaluate(split, label, out, trained=True)
        self.notes += self.prerequisites(plain, undo is not None)
        return Grid(self.bench, o.profile, self.steps, self.files, self.notes)

    def prerequisites(self, plain: list[Method], undo: bool) -> list[str]:
        o, notes = self.o, []
        missing = [t for t in o.undo_teachers if undo and t not in {m.name for m in plain}]
        if missing:
            notes.append(
                f"UNDO robustifies {', '.join(missing)}, not in --methods: their outputs must already exist under "
                f"{o.output_root}"
            )
        if o.profile == "cpu":
            d = o.demo
            if self.bench == "tofu":
                notes.append(
                    f"demo model {d.model}; TOFU-layout data in {d.workdir}/locuslab/TOFU; forget_quality needs a "
                    f"retain-only reference, which the demo has for {d.demo_split} only"
                )
            elif self.bench == "muse":
                notes.append(
                    f"demo model {d.model}; MUSE-layout stand-ins written to {d.workdir}/muse-bench from the demo's "
                    f"{d.demo_split} authors (forget) and the others (retain); privleak's reference is the grid's "
                    f"evaluation of the retain-only model {d.retain_model}; knowmem runs zero-shot (the demo model "
                    "answers nothing after in-context examples)"
                )
            else:
                notes.append(
                    f"demo model {d.model}; WMDP-layout corpora written to {d.workdir}/{WMDP_CORPORA} from the demo's "
                    f"{d.demo_split} authors (forget) and the others (retain); lm-eval tasks {DEMO_FORGET_TASK} and "
                    f"{DEMO_GENERAL_TASK} in {d.workdir / DEMO_MCQ_DIR} stand in for WMDP and MMLU (which are on "
                    "the Hub); the 80-step budget of the WMDP experiments is lifted for the demo's 10 epochs"
                )
            return notes
        if self.bench != "wmdp":
            where = o.retain_logs_dir or o.ou_root / "saves" / "eval"
            notes.append(f"reference-model logs for forget_quality under {where} (in OU: setup_data.py --eval_logs)")
        if any(m.name == "IdkDPO" for m in plain):
            notes.append("IdkDPO reads data/idk.jsonl (in OU: python setup_data.py --idk)")
        if self.bench == "wmdp":
            notes.append("WMDP corpora in data/wmdp/wmdp-corpora (in OU: python setup_data.py --wmdp)")
        sched = GPU_SCHEDULES[self.bench]
        if sched.accelerate:
            batch = sched.per_device_train_batch_size * sched.gradient_accumulation_steps * sched.gpus
            notes.append(
                f"effective batch {batch} for every method, as OU's script ({sched.gpus} GPUs): every method runs "
                f"under accelerate launch (DeepSpeed ZeRO-3) on {o.num_gpus} GPU(s), DUET, BiDistill and UNDO "
                "included, with the gradient accumulation that keeps that batch (a LoRA method, refused under "
                "ZeRO-3, would run as one process on GPU 0); UNDO keeps its experiment's learning rate and steps"
            )
        return notes


def build_grid(options: GridOptions) -> Grid:
    """The grid of ``options`` (see the module docstring); raises ``ValueError`` on bad combinations."""
    o = options
    if o.benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {o.benchmark!r}; one of {', '.join(BENCHMARKS)}.")
    if o.profile not in PROFILES:
        raise ValueError(f"Unknown profile {o.profile!r}; one of {', '.join(PROFILES)}.")
    if o.profile == "cpu":
        if o.demo is None:
            raise ValueError("--profile cpu needs --demo-workdir: a finished `duet-plugin demo` folder.")
    bad = sorted(set(o.stages) - set(STAGES))
    if bad:
        raise ValueError(f"Unknown stage(s) {bad}; valid stages: {', '.join(STAGES)}.")
    if o.num_gpus < 1:
        raise ValueError(f"--num-gpus must be at least 1, got {o.num_gpus}.")
    teachers = [m.name for m in resolve_methods(o.benchmark, o.undo_teachers)]
    if "UNDO" in teachers:
        raise ValueError("UNDO cannot be its own teacher; name the unlearning methods whose outputs it robustifies.")
    o.undo_teachers = tuple(teachers)
    return _Builder(o).build()


# -- running -------------------------------------------------------------------------------------------------


class StepFailed(RuntimeError):
    """A command of the grid failed; the message names its log."""


def run_grid(grid: Grid, rerun: bool = False, out: IO[str] | None = None) -> None:
    """Run the steps in order; a step whose marker holds the same command is skipped unless ``rerun``."""
    out = out or sys.stdout
    write_files(grid.files)
    total, t0 = len(grid.steps), time.time()
    for i, step in enumerate(grid.steps, 1):
        command = step.shell()
        if not rerun and step.marker.is_file() and step.marker.read_text() == command:
            print(f"[{i}/{total}] {step.name}: done earlier, skipped ({step.marker})", file=out, flush=True)
            continue
        missing = [p for p in step.needs if not p.exists()]
        if missing:
            raise StepFailed(
                f"{step.name} needs {', '.join(map(str, missing))}, which no earlier step made: run the method or "
                "stage that makes it first (see --dry-run)."
            )
        print(f"[{i}/{total}] {step.name}: running (log {step.log})", file=out, flush=True)
        step.run_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with step.log.open("w") as log:
            log.write(command + "\n\n")
            log.flush()
            rc = subprocess.call(
                list(step.argv), cwd=step.cwd, env={**os.environ, **step.env}, stdout=log, stderr=subprocess.STDOUT
            )
        if rc != 0:
            tail = "".join(step.log.read_text().splitlines(keepends=True)[-25:])
            raise StepFailed(f"{step.name} failed (exit {rc}); full log: {step.log}\n{tail}")
        step.marker.write_text(command)
        print(f"[{i}/{total}] {step.name}: done in {time.time() - start:.0f}s", file=out, flush=True)
    print(f"All {total} commands done in {time.time() - t0:.0f}s.", file=out)


# -- command line --------------------------------------------------------------------------------------------


def method_table(benchmark: str) -> str:
    """What ``--list-methods`` prints: every method with its source, then the skipped ones and why."""
    lines = [
        f"{m.name:<11} experiment={m.experiment}" + (f" trainer={m.trainer}" if m.trainer else "") + f"   ({m.source})"
        for m in METHODS[benchmark].values()
    ]
    lines += [f"{name:<11} skipped: {why}" for name, why in SKIPPED[benchmark].items()]
    return "\n".join(lines)


def parser(benchmark: str) -> argparse.ArgumentParser:
    splits, methods = SPLITS[benchmark], METHODS[benchmark]
    p = argparse.ArgumentParser(
        prog=f"reproduce_{benchmark}.py",
        description=f"Run DUET, BiDistill, UNDO and OU's baselines on {benchmark.upper()} with one model, data and "
        "schedule, then OU's evaluation and the robustness suite on every result. "
        f"Methods: {', '.join(methods)}. Splits: {', '.join(splits)}.",
    )
    p.add_argument("--dry-run", action="store_true", help="print every command (train, eval, robustness) and exit")
    p.add_argument("--list-methods", action="store_true", help="print the methods, their sources and what is skipped")
    p.add_argument("--methods", nargs="+", metavar="M", help="methods to run (default: all)")
    p.add_argument("--splits", nargs="+", metavar="S", help=f"splits (default: all of {', '.join(splits)})")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="stages (default: all)")
    p.add_argument(
        "--undo-teachers",
        nargs="+",
        default=list(UNDO_TEACHERS[benchmark]),
        metavar="M",
        help=f"methods whose outputs UNDO robustifies (default: {' '.join(UNDO_TEACHERS[benchmark])})",
    )
    p.add_argument("--ou-root", help="OpenUnlearning checkout (default: $OU_ROOT, then the current directory)")
    p.add_argument(
        "--output-root",
        help="where runs go, one folder per run (default: OU_ROOT/saves/reproduce/"
        f"{benchmark}; with --profile cpu: DEMO_WORKDIR/reproduce/{benchmark})",
    )
    p.add_argument(
        "--profile", choices=PROFILES, default="gpu", help="gpu (default): OU's scripts' settings; cpu: the demo model"
    )
    p.add_argument("--demo-workdir", help="--profile cpu: a finished `duet-plugin demo` folder to reuse")
    p.add_argument("--threads", type=int, default=2, help="--profile cpu: CPU threads per command (default: 2)")
    p.add_argument(
        "--model", help=f"OU model config (default: {DEFAULT_MODELS[benchmark]}; with --profile cpu: {CPU_MODEL})"
    )
    p.add_argument("--model-path", help="the model to unlearn (default: the benchmark's target for --model)")
    p.add_argument("--num-gpus", type=int, default=2, help="GPUs for accelerate launch (default: 2, as OU's scripts)")
    p.add_argument("--main-process-port", type=int, help="accelerate's --main_process_port")
    p.add_argument("--retain-logs-dir", help="reference-model logs (default: OU_ROOT/saves/eval)")
    p.add_argument("--rerun", action="store_true", help="run steps again even when their .done marker matches")
    return p


def options_from_args(benchmark: str, args: argparse.Namespace) -> GridOptions:
    """Check the arguments and build :class:`GridOptions` (raises ``ValueError`` / ``FileNotFoundError``)."""
    from duet_plugin.openunlearning.launcher import find_ou_root

    ou_root = find_ou_root(args.ou_root)
    demo = None
    if args.profile == "cpu":
        if not args.demo_workdir:
            raise ValueError("--profile cpu needs --demo-workdir: a finished `duet-plugin demo` folder.")
        demo = load_demo_context(args.demo_workdir, threads=args.threads)
        if benchmark != "tofu" and not (demo.retain_model / "config.json").is_file():
            raise FileNotFoundError(
                f"{demo.retain_model} is missing: the {benchmark} grid evaluates the demo's retain-only model (the "
                "reference); rerun `duet-plugin demo`."
            )
    if args.output_root:
        output_root = Path(args.output_root).expanduser().resolve()
    elif demo is not None:
        output_root = demo.workdir / "reproduce" / benchmark
    else:
        output_root = ou_root / "saves" / "reproduce" / benchmark
    return GridOptions(
        benchmark=benchmark,
        ou_root=ou_root,
        output_root=output_root,
        profile=args.profile,
        methods=resolve_methods(benchmark, args.methods),
        splits=resolve_splits(benchmark, args.splits),
        stages=tuple(args.stages),
        undo_teachers=tuple(args.undo_teachers),
        model=args.model,
        model_path=args.model_path,
        num_gpus=args.num_gpus,
        retain_logs_dir=Path(args.retain_logs_dir).resolve() if args.retain_logs_dir else None,
        main_process_port=args.main_process_port,
        python=sys.executable if args.profile == "cpu" else "python",
        demo=demo,
    )


def main(benchmark: str, argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """``scripts/reproduce_<benchmark>.py``: 0 on success, 2 on bad arguments, 1 when a command fails."""
    out = out or sys.stdout
    from duet_plugin.openunlearning.launcher import OURootNotFound

    args = parser(benchmark).parse_args(argv)
    if args.list_methods:
        print(method_table(benchmark), file=out)
        return 0
    try:
        grid = build_grid(options_from_args(benchmark, args))
    except (ValueError, FileNotFoundError, OURootNotFound) as err:
        print(f"reproduce_{benchmark}: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        out.write(grid.render())
        return 0
    try:
        run_grid(grid, rerun=args.rerun, out=out)
    except StepFailed as err:
        print(f"reproduce_{benchmark}: {err}", file=sys.stderr)
        return 1
    return 0
