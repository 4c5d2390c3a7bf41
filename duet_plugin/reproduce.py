"""Reproduction grids: DUET, BiDistill, UNDO and OU's baselines on one benchmark, with the same model, data and
schedule, then OU's evaluation and the plugin's robustness suite on every result.

A grid is data: a list of :class:`Step` (argv, env, cwd, output folder, what must exist first) built without
touching a framework, so it can be printed (``--dry-run``), tested and run in order. The ``scripts/reproduce_*.py``
files are thin wrappers around :func:`main`.

Methods: a grid trains a table of :class:`Method` entries, each carrying its experiment, ``trainer=`` override,
source, CPU overrides and schedule, and whether it robustifies other methods' outputs; the builder asks the entry and
never the method's name. OU's baselines are entries of :data:`OU_METHODS`. The plugin's methods are discovered from
its trainer YAMLs (``duet_plugin/configs/trainer/*.yaml``, see :func:`plugin_methods`): a new trainer YAML with an
experiment (its own or one it inherits) joins every grid it has an experiment for.

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
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import IO, Any

import yaml

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
from duet_plugin.openunlearning.cpu_overrides import eval_overrides, offline_env, train_overrides
from duet_plugin.openunlearning.registration import config_dir

BENCHMARKS = ("tofu", "muse", "wmdp")
STAGES = ("train", "eval", "robustness")
PROFILES = ("gpu", "cpu")
#: The order the grids list the plugin's methods in: a discovered method not named here follows them (by name), and
#: methods that robustify others' outputs come last.
OURS = ("DUET", "BiDistill", "UNDO")
#: The label of the model before unlearning (evaluated, never trained).
ORIGINAL = "original"
#: Turn off OU's in-training evaluation: every model is evaluated by the separate eval step, as in OU's scripts
#: (community/methods/*/run.sh pass the first two for the same reason).
NO_TRAIN_EVAL = ("trainer.args.eval_strategy=no", "trainer.args.eval_on_start=false", "trainer.args.do_eval=false")
#: The attack metrics of eval/{tofu,muse}/robustness whose children generate text.
TOFU_ATTACKS = ("relearn_attack", "prompt_attack", "prefill_attack", "quantization_attack")
#: Robustness metrics of eval/tofu/robustness that split the forget authors (partition_by: concept).
TOFU_PARTITIONED = ("directional_ablation", "embedding_attack")
#: The metrics of each benchmark's robustness experiment (configs/experiment/eval/<benchmark>/robustness.yaml; on
#: WMDP the attacks of configs/eval/lm_eval_robust.yaml), under :data:`ROBUSTNESS_NODES`; ``--robustness-without``
#: leaves any of them out.
ROBUSTNESS_METRICS = {
    "tofu": (
        *TOFU_ATTACKS, "over_refusal", "performance_shift", "logit_lens", "directional_ablation", "embedding_attack"
    ),
    "muse": (*TOFU_ATTACKS, "over_refusal", "performance_shift", "logit_lens", "directional_ablation"),
    "wmdp": ("relearn", "quantization"),
}  # fmt: skip
ROBUSTNESS_NODES = {"tofu": "eval.tofu.metrics", "muse": "eval.muse.metrics", "wmdp": "eval.lm_eval.attacks"}
#: Robustness metrics the CPU profile adds to the experiment's (see :func:`_heldout_relearn_args`).
CPU_ROBUSTNESS_EXTRA = {"tofu": ("relearn_heldout",), "muse": (), "wmdp": ()}
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


# -- method entries: what a method needs beyond its experiment ------------------------------------------------


@dataclass(frozen=True)
class CpuContext:
    """What a method's CPU-profile hooks read: the benchmark, the finished demo and the grid's output folder."""

    benchmark: str
    demo: DemoContext
    output_root: Path


#: A method's CPU-profile overrides for one split.
CpuOverrides = Callable[[CpuContext, str], list[str]]


def muse_raw_text_chunks(ctx: CpuContext, split: str) -> list[str]:
    """MUSE_forget / MUSE_retain raw-text chunks that fit the demo model (:data:`CPU_MUSE_MAX_LENGTH`)."""
    return [
        f"data.forget.MUSE_forget.args.max_length={CPU_MUSE_MAX_LENGTH}",
        f"data.retain.MUSE_retain.args.max_length={CPU_MUSE_MAX_LENGTH}",
    ]


def steered_prefix(ctx: CpuContext, split: str) -> list[str]:
    """The demo's DUET prefix (the demo model learnt to follow this instruction in the user turn), naming the split's
    forget authors; on MUSE and WMDP, whose stand-ins forget the demo's own forget split, that split's."""
    authors = ctx.demo.forget_authors[split if ctx.benchmark == "tofu" else ctx.demo.demo_split]
    concepts = ",".join(json.dumps(a) for a in authors)
    return [
        "trainer.method_args.prefix.name=never_heard_of",
        "trainer.method_args.prefix.placement=user",
        f"trainer.method_args.prefix.concepts=[{concepts}]",
    ]


def rmu_demo_layers(ctx: CpuContext, split: str) -> list[str]:
    """RMU's steered layer at the same depth of the demo model (OU's default steers layer 7 of 16, which the demo
    model may not have); on WMDP also the MLPs it trains (unlearn/wmdp/default: layers 5-7 around layer 7)."""
    layer = max(0, ctx.demo.num_layers // 2 - 1)
    out = [f"trainer.method_args.module_regex=model\\.layers\\.{layer}"]
    if ctx.benchmark == "wmdp":
        layers = "|".join(str(i) for i in range(max(0, layer - 2), layer + 1))
        out.append(
            f'trainer.method_args.trainable_params_regex=["model\\.layers\\.({layers})\\.mlp\\.down_proj\\.weight"]'
        )
    return out


def _idk_file(ctx: CpuContext) -> Path:
    return ctx.output_root / "idk.jsonl"


def idk_answers(ctx: CpuContext) -> dict[Path, str]:
    """The "I don't know" answers of the CPU profile: the demo's refusal sentence."""
    return {_idk_file(ctx): REFUSAL + "\n"}


def idk_path(ctx: CpuContext, split: str) -> list[str]:
    """Points OU's TOFU_QA_forget_idk data at :func:`idk_answers`' file (OU reads data/idk.jsonl)."""
    return [f"data.forget.TOFU_QA_forget_idk.args.idk_path={_idk_file(ctx)}"]


def demo_unlearning_schedule(ctx: CpuContext) -> list[str]:
    """The demo's unlearning schedule (10 epochs; the 80-step budget of the WMDP experiments is lifted so that the
    epochs count)."""
    demo = ctx.demo
    return [
        f"trainer.args.num_train_epochs={demo.unlearn_epochs}",
        *(["trainer.args.max_steps=-1"] if ctx.benchmark == "wmdp" else []),
        f"trainer.args.learning_rate={demo.unlearn_lr}",
        f"trainer.args.per_device_train_batch_size={demo.unlearn_batch_size}",
        "trainer.args.gradient_accumulation_steps=1",
        f"trainer.args.seed={demo.seed}",
        *([f"trainer.args.logging_steps={demo.unlearn_logging_steps}"] if demo.unlearn_logging_steps else []),
    ]


def recovery_schedule(ctx: CpuContext, recovery_eval: bool = True) -> list[str]:
    """The demo's schedule for a method that robustifies another's output (the demo's settings; on the tiny model
    scripts/demo_undo_relearn.py's 500 steps of 32), with the recovery measured 20 times along the way when the
    trainer takes ``recovery_eval_steps``."""
    demo = ctx.demo
    every = max(1, demo.recovery_steps // 20)
    return [
        *([f"trainer.method_args.recovery_eval_steps={every}"] if recovery_eval else []),
        f"trainer.args.max_steps={demo.recovery_steps}",
        f"trainer.args.learning_rate={demo.recovery_lr:g}",
        f"trainer.args.per_device_train_batch_size={demo.recovery_batch_size}",
        "trainer.args.gradient_accumulation_steps=1",
        f"trainer.args.warmup_steps={max(1, demo.recovery_steps // 25)}",
        f"trainer.args.logging_steps={every}",
        f"trainer.args.seed={demo.seed}",
    ]


@dataclass(frozen=True)
class Method:
    """One entry of a grid: everything method-specific.

    ``trainer``: the ``trainer=`` override (None: the experiment's own). ``lora``: it trains LoRA adapters, so it
    runs as one process (OU's accelerate config is DeepSpeed ZeRO-3, under which the plugin refuses LoRA); no method
    of the grids does by default. ``cpu_overrides`` (applied in order), ``cpu_files`` (files they read, written
    before the first command) and ``cpu_schedule``: the CPU profile's settings. ``robustifies``: the method starts
    from other methods' outputs: it is trained once per ``--undo-teachers`` method, after it, with
    ``trainer.method_args.teacher=<its output>``, and labelled ``NAME-TEACHER``. ``prerequisite``: what the GPU
    profile needs the user to provide (a ``--dry-run`` note)."""

    name: str
    experiment: str
    trainer: str | None = None
    source: str = ""
    lora: bool = False
    cpu_overrides: tuple[CpuOverrides, ...] = ()
    cpu_files: Callable[[CpuContext], dict[Path, str]] | None = None
    cpu_schedule: Callable[[CpuContext], list[str]] = demo_unlearning_schedule
    robustifies: bool = False
    prerequisite: str | None = None


# -- OU's baselines -------------------------------------------------------------------------------------------


def _ou(
    name: str,
    bench: str,
    source: str,
    trainer: str | None = None,
    experiment: str = "default",
    cpu_overrides: tuple[CpuOverrides, ...] = (),
    **fields: Any,
) -> Method:
    # OU's MUSE experiments read MUSE_forget / MUSE_retain raw-text chunks.
    chunks = (muse_raw_text_chunks,) if bench == "muse" else ()
    return Method(
        name,
        f"unlearn/{bench}/{experiment}",
        trainer or name,
        source,
        cpu_overrides=(*chunks, *cpu_overrides),
        **fields,
    )


_RMU = {"cpu_overrides": (rmu_demo_layers,)}
_IDK = {
    "cpu_overrides": (idk_path,),
    "cpu_files": idk_answers,
    "prerequisite": "IdkDPO reads data/idk.jsonl (in OU: python setup_data.py --idk)",
}

#: OU's baselines on each benchmark, in grid order.
OU_METHODS: dict[str, dict[str, Method]] = {
    "tofu": {
        m.name: m
        for m in [
            _ou("GradAscent", "tofu", "OU scripts/tofu_unlearn.sh"),
            _ou("GradDiff", "tofu", "OU scripts/tofu_unlearn.sh"),
            _ou("NPO", "tofu", "OU scripts/tofu_unlearn.sh"),
            _ou("SimNPO", "tofu", "OU docs/repro.md (TOFU table)"),
            _ou("RMU", "tofu", "OU scripts/tofu_unlearn.sh", **_RMU),
            _ou("UNDIAL", "tofu", "OU community/methods/UNDIAL"),
            _ou("IdkDPO", "tofu", "OU scripts/tofu_unlearn.sh (DPO on unlearn/tofu/idk)", "DPO", "idk", **_IDK),
            _ou("CEU", "tofu", "OU community/methods/CEU"),
            _ou("SatImp", "tofu", "OU community/methods/SatImp"),
            _ou("WGA", "tofu", "OU community/methods/WGA"),
        ]
    },
    "muse": {
        m.name: m
        for m in [
            _ou("GradAscent", "muse", "OU scripts/muse_unlearn.sh"),
            _ou("GradDiff", "muse", "OU scripts/muse_unlearn.sh"),
            _ou("NPO", "muse", "OU scripts/muse_unlearn.sh"),
            _ou("SimNPO", "muse", "OU scripts/muse_unlearn.sh"),
            _ou("RMU", "muse", "OU docs/repro.md (MUSE table)", **_RMU),
        ]
    },
    "wmdp": {
        "RMU": Method("RMU", "unlearn/wmdp/default", None, "OU configs/experiment/unlearn/wmdp/default.yaml", **_RMU),
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
#: OU's methods that a benchmark's grid leaves out, and why.
OU_SKIPPED: dict[str, dict[str, str]] = {
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


# -- the plugin's methods, discovered from its trainer YAMLs --------------------------------------------------

#: The source :func:`plugin_methods` gives a method of the plugin's own trainer folder.
PLUGIN_SOURCE = "this plugin"


def _read_yaml(path: Path) -> dict[str, Any]:
    content = yaml.safe_load(path.read_text())
    return content if isinstance(content, dict) else {}


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``, nested mappings merged key by key (as Hydra merges a defaults list)."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = _merge(out[key], value) if both else value
    return out


@dataclass(frozen=True)
class TrainerConfig:
    """A trainer YAML: ``name`` is its file name without ``.yaml`` (what ``trainer=`` selects), ``parents`` the
    entries of its ``defaults`` list that are trainer YAMLs of the folders read, ``method_args`` its own merged over
    its parents' (child over parent)."""

    name: str
    path: Path
    handler: str | None
    parents: tuple[str, ...]
    method_args: Mapping[str, Any]

    @property
    def is_method(self) -> bool:
        """A YAML without ``handler`` or named ``_*`` (a shared base) is not a method of its own."""
        return bool(self.handler) and not self.name.startswith("_")

    @property
    def steered(self) -> bool:
        """It takes a steering ``prefix`` (the CPU profile sets the demo's)."""
        return "prefix" in self.method_args

    @property
    def robustifies(self) -> bool:
        """It requires a ``teacher`` (left null or ``???``) and takes no prefix: it starts from another run's output."""
        return not self.steered and "teacher" in self.method_args and self.method_args["teacher"] in (None, "???")


def read_trainer_configs(folders: Iterable[Path]) -> dict[str, TrainerConfig]:
    """Every ``*.yaml`` of ``folders`` by name (read with PyYAML; a name found in two folders: the first folder's, as
    on a Hydra search path), with its inherited ``method_args`` merged in. A cycle in the defaults is cut."""
    files: dict[str, tuple[Path, dict[str, Any]]] = {}
    for folder in folders:
        for path in sorted(Path(folder).glob("*.yaml")):
            files.setdefault(path.stem, (path, _read_yaml(path)))

    def parents(content: Mapping[str, Any]) -> tuple[str, ...]:
        defaults = content.get("defaults")
        entries = defaults if isinstance(defaults, list) else []
        return tuple(e for e in entries if isinstance(e, str) and e != "_self_" and e in files)

    def method_args(name: str, chain: tuple[str, ...]) -> dict[str, Any]:
        content = files[name][1]
        merged: dict[str, Any] = {}
        for parent in parents(content):
            if parent not in chain:
                merged = _merge(merged, method_args(parent, (*chain, parent)))
        own = content.get("method_args")
        return _merge(merged, own if isinstance(own, Mapping) else {})

    return {
        name: TrainerConfig(
            name,
            path,
            str(content["handler"]) if content.get("handler") else None,
            parents(content),
            method_args(name, (name,)),
        )
        for name, (path, content) in files.items()
    }


def _experiment_owner(
    config: TrainerConfig, configs: Mapping[str, TrainerConfig], experiments: Path
) -> TrainerConfig | None:
    """``config`` when ``experiments/<handler, lower case>.yaml`` exists, else the nearest config up its defaults
    chain that has one (breadth first); None when none has."""
    queue, seen = [config.name], set()
    while queue:
        current = configs[queue.pop(0)]
        if current.name in seen:
            continue
        seen.add(current.name)
        if current.handler and (experiments / f"{current.handler.lower()}.yaml").is_file():
            return current
        queue += current.parents
    return None


def _reads_muse_raw_text(experiment: Mapping[str, Any]) -> bool:
    """Whether an experiment YAML's defaults put OU's MUSE_forget / MUSE_retain under data.forget / data.retain."""
    datasets = {}
    for entry in experiment.get("defaults") or []:
        for key, value in entry.items() if isinstance(entry, dict) else ():
            group, _, node = str(key).removeprefix("override ").partition("@")
            if group.strip() == "/data/datasets":
                datasets[node] = value
    return datasets.get("data.forget") == "MUSE_forget" and datasets.get("data.retain") == "MUSE_retain"


def _plugin_method(
    config: TrainerConfig, owner: TrainerConfig, benchmark: str, experiments: Path, source: str
) -> Method:
    experiment = owner.handler.lower()
    overrides: list[CpuOverrides] = []
    if _reads_muse_raw_text(_read_yaml(experiments / f"{experiment}.yaml")):
        overrides.append(muse_raw_text_chunks)
    if config.steered:
        overrides.append(steered_prefix)
    schedule = demo_unlearning_schedule
    if config.robustifies:
        schedule = partial(recovery_schedule, recovery_eval="recovery_eval_steps" in config.method_args)
    return Method(
        config.handler,
        f"unlearn/{benchmark}/{experiment}",
        None if owner is config else config.name,
        source,
        lora=bool(config.method_args.get("lora")),
        cpu_overrides=tuple(overrides),
        cpu_schedule=schedule,
        robustifies=config.robustifies,
    )


def plugin_methods(benchmark: str, trainer_config_dirs: Sequence[Path] = ()) -> tuple[list[Method], dict[str, str]]:
    """The plugin's methods on ``benchmark`` in grid order, and those left out with why. Read from the trainer YAMLs
    of ``duet_plugin/configs/trainer`` and then ``trainer_config_dirs``, never from names:

    - a YAML with a ``handler`` whose file name does not start with ``_`` is the method ``handler``; its defaults
      entries that are YAMLs of these folders are its parents, whose ``method_args`` it inherits;
    - experiment: ``unlearn/<benchmark>/<handler, lower case>`` when the plugin has that experiment (which selects
      the trainer); else the nearest parent's, with ``trainer=<file name>``; with neither, it is left out;
    - a method that takes ``prefix`` gets the demo's prefix on the CPU; one that requires a ``teacher`` (null) and
      takes no prefix robustifies other methods' outputs (the recovery schedule on the CPU); one whose experiment
      reads MUSE_forget / MUSE_retain gets the CPU's chunk length;
    - order: :data:`OURS`, then others by name; robustifiers last."""
    root = config_dir()
    own = root / "trainer"
    experiments = root / "experiment" / "unlearn" / benchmark
    configs = read_trainer_configs([own, *map(Path, trainer_config_dirs)])
    methods: dict[str, Method] = {}
    skipped: dict[str, str] = {}
    for config in configs.values():
        if not config.is_method or config.handler in methods or config.handler in skipped:
            continue
        owner = _experiment_owner(config, configs, experiments)
        if owner is None:
            skipped[config.handler] = (
                f"this plugin has no experiment unlearn/{benchmark}/{config.handler.lower()}.yaml for it "
                f"({config.path.name}) or a trainer config it inherits"
            )
            continue
        source = PLUGIN_SOURCE if config.path.parent == own else str(config.path)
        methods[config.handler] = _plugin_method(config, owner, benchmark, experiments, source)

    def order(m: Method) -> tuple[bool, int, str]:
        return m.robustifies, OURS.index(m.name) if m.name in OURS else len(OURS), m.name

    return sorted(methods.values(), key=order), skipped


_PLUGIN_METHODS = {bench: plugin_methods(bench) for bench in BENCHMARKS}
#: Every method of each benchmark's grid, in grid order: OU's baselines, then the plugin's.
METHODS: dict[str, dict[str, Method]] = {
    bench: {**OU_METHODS[bench], **{m.name: m for m in _PLUGIN_METHODS[bench][0]}} for bench in BENCHMARKS
}
#: Methods that a benchmark's grid leaves out, and why.
SKIPPED: dict[str, dict[str, str]] = {bench: {**OU_SKIPPED[bench], **_PLUGIN_METHODS[bench][1]} for bench in BENCHMARKS}
#: Which unlearned models UNDO robustifies by default (the UNDO paper's WMDP run starts from RMU).
UNDO_TEACHERS = {"tofu": ("DUET", "GradDiff"), "muse": ("DUET", "GradDiff"), "wmdp": ("DUET", "RMU")}


def _methods_of(benchmark: str, trainer_config_dirs: Sequence[Path] = ()) -> tuple[dict[str, Method], dict[str, str]]:
    """The benchmark's methods by name in grid order, and the skipped ones (with extra trainer folders: read anew)."""
    if not trainer_config_dirs:
        return METHODS[benchmark], SKIPPED[benchmark]
    ours, skipped = plugin_methods(benchmark, trainer_config_dirs)
    return {**OU_METHODS[benchmark], **{m.name: m for m in ours}}, {**OU_SKIPPED[benchmark], **skipped}


def _plugin_names(benchmark: str, trainer_config_dirs: Sequence[Path] = ()) -> tuple[list[str], list[str]]:
    """(the plugin's methods, those that robustify others) on ``benchmark``."""
    ours = plugin_methods(benchmark, trainer_config_dirs)[0] if trainer_config_dirs else _PLUGIN_METHODS[benchmark][0]
    return [m.name for m in ours], [m.name for m in ours if m.robustifies]


def _and(names: Sequence[str]) -> str:
    """``A``, ``A and B``, ``A, B and C``."""
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


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


def resolve_methods(
    benchmark: str, names: Iterable[str] | None, trainer_config_dirs: Sequence[Path] = ()
) -> list[Method]:
    """The benchmark's methods named in ``names`` (case and dashes ignored: ``ce-u`` is ``CEU``), in the grid's
    order; ``None``: all of them. ``trainer_config_dirs``: more trainer YAML folders (:func:`plugin_methods`).
    Raises ``ValueError`` naming the valid ones."""
    table, skipped_table = _methods_of(benchmark, trainer_config_dirs)
    if names is None:
        return list(table.values())
    valid = ", ".join(table)
    by_key = {_key(n): n for n in table}
    skipped = {_key(n): (n, why) for n, why in skipped_table.items()}
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
    qa_per_author: int = 5
    recovery_steps: int = 500
    recovery_lr: float = 1e-3
    recovery_batch_size: int = 32
    unlearn_logging_steps: int | None = None

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
    from duet_plugin.demo.pipeline import MARKER, SETTINGS_FILE, DemoSettings  # imports torch: CPU profile only

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
    settings = DemoSettings.load(w / SETTINGS_FILE)
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
        qa_per_author=settings.qa_per_author,
        recovery_steps=settings.recovery_steps,
        recovery_lr=settings.recovery_lr,
        recovery_batch_size=settings.recovery_batch_size,
        unlearn_logging_steps=settings.unlearn_logging_steps,
    )


@dataclass
class GridOptions:
    """Everything that shapes a grid (the CLI's arguments). ``methods``: None for all of the benchmark's.
    ``trainer_config_dirs``: trainer YAML folders read after the plugin's (see :func:`plugin_methods`)."""

    benchmark: str
    ou_root: Path
    output_root: Path
    profile: str = "gpu"
    methods: list[Method] | None = None
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
    #: The CPU profile's held-out relearning (relearn_heldout.yaml, cheaper): checkpoints and seeds.
    heldout_steps: tuple[int, ...] = (0, 5, 10, 25)
    heldout_seeds: tuple[int, ...] = (0, 1)
    trainer_config_dirs: tuple[Path, ...] = ()
    #: Hydra overrides for every training command (replacing the grid's own value of the same key), and the tag
    #: that names the variant's runs (``<method>-<tag>``) so that they never overwrite the grid's own.
    overrides: tuple[str, ...] = ()
    tag: str | None = None
    #: Robustness metrics (:func:`robustness_metrics`) to leave out of every robustness evaluation.
    robustness_without: tuple[str, ...] = ()


class _Runs:
    """A grid's run names and folders, the model each split starts from, its reference logs and split overrides."""

    def __init__(self, options: GridOptions) -> None:
        self.options = options
        self.benchmark = options.benchmark
        self.cpu = options.profile == "cpu"
        self.model = options.model or (CPU_MODEL if self.cpu else DEFAULT_MODELS[self.benchmark])

    def name(self, split: str, label: str) -> str:
        model = "demo" if self.cpu else self.model
        return f"{self.benchmark}_{model}_{split}_{label}"

    def folder(self, split: str, label: str) -> Path:
        return self.options.output_root / self.name(split, label)

    def original_model(self, split: str) -> str:
        if self.cpu:
            return str(self.options.demo.model)
        if self.options.model_path:
            return self.options.model_path
        return {
            "tofu": f"open-unlearning/tofu_{self.model}_full",
            "muse": f"muse-bench/MUSE-{split}_target",
            "wmdp": "HuggingFaceH4/zephyr-7b-beta",
        }[self.benchmark]

    def retain_logs(self, split: str) -> Path | None:
        """OU's reference-model logs (``python setup_data.py --eval_logs``); the demo's own on the CPU (TOFU: its
        retain-only evaluation; MUSE: the grid's evaluation of its retain-only model)."""
        if self.cpu:
            if self.benchmark == "muse":
                return self.folder(split, RETAIN_ONLY) / "evals" / "MUSE_EVAL.json"
            if self.benchmark == "wmdp":
                return None
            return self.options.demo.retain_logs if split == self.options.demo.demo_split else None
        root = self.options.retain_logs_dir or self.options.ou_root / "saves" / "eval"
        if self.benchmark == "tofu":
            return root / f"tofu_{self.model}_{TOFU_SPLITS[split]['retain_split']}" / "TOFU_EVAL.json"
        if self.benchmark == "muse":
            return root / f"muse_{self.model}_{split}_retrain" / "MUSE_EVAL.json"
        return None

    def split_args(self, split: str, train: bool) -> list[str]:
        if self.benchmark != "tofu":
            return [f"data_split={split}"]
        splits = TOFU_SPLITS[split]
        # Training takes forget/retain (as OU's scripts; unlearn/tofu/idk has no holdout_split), eval forget/holdout.
        keys = ("forget_split", "retain_split") if train else ("forget_split", "holdout_split")
        return [f"{k}={splits[k]}" for k in keys]


class _Launcher:
    """Turns a script's overrides into grid steps: ``accelerate launch`` as OU's scripts or one process (on the CPU:
    offline, in the demo folder). Steps of stages not asked for are dropped."""

    def __init__(self, options: GridOptions) -> None:
        self.options = options
        self.cpu = options.profile == "cpu"
        self.steps: list[Step] = []

    def cpu_env(self) -> dict[str, str]:
        demo = self.options.demo
        return offline_env(demo.workdir / ".hf_datasets_cache", demo.threads)

    def command(self, script: str, processes: int) -> tuple[list[str], dict[str, str]]:
        """argv prefix and env: ``accelerate launch`` on ``processes`` GPUs as OU's scripts, or one process."""
        options = self.options
        if self.cpu:
            return [options.python, str(options.ou_root / "src" / f"{script}.py")], self.cpu_env()
        if processes > 1:
            argv = ["accelerate", "launch", "--config_file", "configs/accelerate/default_config.yaml"]
            argv += ["--num_processes", str(processes)]
            if options.main_process_port is not None:
                argv += ["--main_process_port", str(options.main_process_port)]
            return [*argv, f"src/{script}.py"], {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(processes))}
        return [options.python, f"src/{script}.py"], {"CUDA_VISIBLE_DEVICES": "0"}

    def cwd(self) -> Path:
        # OU's relative paths (data/idk.jsonl, data/wmdp, configs/accelerate) resolve against the OU root; the
        # demo's TOFU-layout data resolves against the demo folder.
        return self.options.demo.workdir if self.cpu else self.options.ou_root

    def add(
        self, kind: str, run: str, script: str, args: list[str], processes: int = 1, needs: Sequence[Path] = ()
    ) -> None:
        if kind not in self.options.stages:
            return
        prefix, env = self.command(script, processes)
        config = ["--config-name=unlearn.yaml"] if script == "train" else []
        run_dir = self.options.output_root / run
        self.steps.append(Step(kind, run, (*prefix, *config, *args), self.cwd(), run_dir, env, tuple(needs)))


# -- the CPU profile's evaluation overrides, per benchmark ------------------------------------------------------


def _relearn_args(options: GridOptions, node: str) -> list[str]:
    """The CPU profile's relearning attack (scripts/demo_robustness.py's steps and learning rates)."""
    lrs = ",".join(f"{lr:g}" for lr in options.relearn_lrs)
    return [f"{node}.steps={options.relearn_steps}", f"{node}.learning_rates=[{lrs}]"]


def _cpu_tofu_eval(options: GridOptions, robustness: bool) -> list[str]:
    n = options.demo.eval_max_new_tokens
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
            f"eval.tofu.metrics.performance_shift.pre_compute.forget_Q_A_PARA_ROUGE.generation_args.max_new_tokens={n}",
            *_relearn_args(options, "eval.tofu.metrics.relearn_attack"),
            *_heldout_relearn_args(options),
            # whole authors on each side of the white-box probes' partitions: the demo's, not TOFU's 20 questions
            *(f"eval.tofu.metrics.{m}.concept_size={options.demo.qa_per_author}" for m in TOFU_PARTITIONED),
        ]
    return args


def _heldout_relearn_args(options: GridOptions) -> list[str]:
    """Held-out relearning (relearn_heldout.yaml: relearn one half of the forget authors, score the other) at the
    CPU profile's learning rates, with fewer seeds, each author's questions one concept."""
    node = "eval.tofu.metrics.relearn_heldout"
    lrs = ",".join(f"{lr:g}" for lr in options.relearn_lrs)
    return [
        f"+eval/tofu_metrics@{node}=relearn_heldout",
        f"{node}.learning_rates=[{lrs}]",
        f"{node}.eval_at_steps=[{','.join(map(str, options.heldout_steps))}]",
        f"{node}.seeds=[{','.join(map(str, options.heldout_seeds))}]",
        f"{node}.concept_size={options.demo.qa_per_author}",
        f"{node}.pre_compute.forget_Q_A_ROUGE.generation_args.max_new_tokens={options.demo.eval_max_new_tokens}",
    ]


def _cpu_muse_eval(options: GridOptions, robustness: bool) -> list[str]:
    """knowmem zero-shot (see :data:`MUSE_KNOWMEM`), the demo's relearning attack."""
    nodes = MUSE_KNOWMEM["default"] + (MUSE_KNOWMEM["robustness"] if robustness else ())
    args = [f"eval.muse.metrics.{m}.datasets.{d}.args.few_shot_dataset_hf_args=null" for m, d in nodes]
    if robustness:
        args += _relearn_args(options, "eval.muse.metrics.relearn_attack")
    return args


def _cpu_wmdp_eval(options: GridOptions, robustness: bool) -> list[str]:
    """The demo's lm-eval stand-ins through RobustLMEvalEvaluator (OU's LMEvalEvaluator has no include_path;
    without attacks the plugin's evaluator is OU's evaluation), in the demo model's chat format."""
    args = [] if robustness else ["eval=lm_eval_robust", "eval.lm_eval.attacks=null"]
    args += [
        f"eval.lm_eval.tasks=[{DEMO_FORGET_TASK},{DEMO_GENERAL_TASK}]",
        f"eval.lm_eval.include_path={options.demo.workdir / DEMO_MCQ_DIR}",
        f"eval.lm_eval.forget_tasks=[{DEMO_FORGET_TASK}]",
        "eval.lm_eval.simple_evaluate_args.apply_chat_template=true",
    ]
    if robustness:
        args += _relearn_args(options, "eval.lm_eval.attacks.relearn")
    return args


_CPU_EVAL = {"tofu": _cpu_tofu_eval, "muse": _cpu_muse_eval, "wmdp": _cpu_wmdp_eval}


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def with_overrides(args: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """``args`` with each of ``overrides`` (Hydra ``key=value``, ``+key=value`` or ``~key``) in place of the
    argument that sets the same key, or appended."""
    keys = {_override_key(o) for o in overrides}
    return [*(a for a in args if a.startswith("--") or _override_key(a) not in keys), *overrides]


def check_variant(overrides: Sequence[str], tag: str | None) -> None:
    """Overrides need a tag (their runs must not take the grid's own names); a tag names a variant only."""
    if overrides and not tag:
        raise ValueError("--override needs --tag NAME: the variant's runs are named <method>-NAME, so that they do "
                         "not overwrite (or get skipped as) the grid's own runs.")  # fmt: skip
    if tag and not overrides:
        raise ValueError(f"--tag {tag} names a variant, but no --override says what differs; add e.g. "
                         "--override trainer.method_args.balance=none.")  # fmt: skip
    if tag and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", tag):
        raise ValueError(f"--tag {tag!r}: use letters, digits, '.', '_' and '-' (it becomes part of folder names).")
    for o in overrides:
        if "=" not in o and not o.startswith("~"):
            raise ValueError(f"--override {o!r} is not a Hydra override: write key=value (or ~key to delete).")


def robustness_metrics(benchmark: str, profile: str) -> tuple[str, ...]:
    """The metrics of a grid's robustness evaluations: the experiment's, and on the CPU the profile's additions."""
    return ROBUSTNESS_METRICS[benchmark] + (CPU_ROBUSTNESS_EXTRA[benchmark] if profile == "cpu" else ())


def without_metrics(args: Sequence[str], benchmark: str, names: Sequence[str]) -> list[str]:
    """A robustness evaluation's ``args`` without the metrics ``names``: every argument that adds or sets one is
    dropped, and the experiment's own are deleted (``~node``; an lm-eval attack: ``node=null``)."""
    names = list(dict.fromkeys(names))  # Hydra refuses to delete a key twice
    nodes = [f"{ROBUSTNESS_NODES[benchmark]}.{name}" for name in names]

    def sets_one(arg: str) -> bool:
        key = _override_key(arg).rpartition("@")[2]
        return any(key == node or key.startswith(f"{node}.") for node in nodes)

    kept = [a for a in args if a.startswith("--") or not sets_one(a)]
    own = [node for node, name in zip(nodes, names, strict=True) if name in ROBUSTNESS_METRICS[benchmark]]
    return kept + [f"{node}=null" if benchmark == "wmdp" else f"~{node}" for node in own]


class _GridBuilder:
    """Builds one grid (see :func:`build_grid`): per split, the original model's evaluation, then every method's
    training and evaluation, robustifiers once per teacher after the methods they start from."""

    def __init__(self, options: GridOptions) -> None:
        self.options = options
        self.benchmark = options.benchmark
        self.cpu = options.profile == "cpu"
        self.runs = _Runs(options)
        self.launcher = _Launcher(options)
        self.files: dict[Path, str] = {}
        self.cpu_context = CpuContext(self.benchmark, options.demo, options.output_root) if self.cpu else None

    # -- training ----------------------------------------------------------------------------------------------
    def processes(self, method: Method) -> int:
        """Training processes: ``num_gpus`` under accelerate for every method where OU's script uses accelerate;
        one on the CPU, for WMDP (OU runs it on one GPU) and for a LoRA method (refused under ZeRO-3)."""
        if self.cpu or method.lora or not GPU_SCHEDULES[self.benchmark].accelerate:
            return 1
        return self.options.num_gpus

    def gpu_batch(self, method: Method) -> list[str]:
        """OU's script's per-device batch for every method, with the accumulation that keeps its effective batch on
        however many processes run (learning rate and step budget stay the experiment's)."""
        schedule = GPU_SCHEDULES[self.benchmark]
        if schedule.per_device_train_batch_size is None:
            return []
        steps = schedule.gradient_accumulation_steps * schedule.gpus
        processes = self.processes(method)
        if steps % processes:
            raise ValueError(
                f"OU's {self.benchmark} batch ({schedule.per_device_train_batch_size} per device x {steps} over all "
                f"GPUs) does not split over {processes} GPUs; use --num-gpus dividing {steps}."
            )
        return [
            f"trainer.args.per_device_train_batch_size={schedule.per_device_train_batch_size}",
            f"trainer.args.gradient_accumulation_steps={steps // processes}",
            *schedule.extra,
        ]

    def method_args(self, method: Method, split: str) -> list[str]:
        """The schedule and the method's own overrides: OU's script's batch on the GPU; on the CPU the entry's
        schedule and overrides (and the files these read)."""
        if not self.cpu:
            return self.gpu_batch(method)
        ctx = self.cpu_context
        if method.cpu_files is not None:
            self.files.update(method.cpu_files(ctx))
        return [
            *method.cpu_schedule(ctx),
            *(arg for overrides in method.cpu_overrides for arg in overrides(ctx, split)),
        ]

    def train(self, method: Method, split: str, label: str, teacher: Path | None = None) -> Path:
        run = self.runs.name(split, label)
        output = self.options.output_root / run
        args = [f"experiment={method.experiment}"]
        if method.trainer:
            args.append(f"trainer={method.trainer}")
        args += [f"task_name={run}", f"model={self.runs.model}", *self.runs.split_args(split, train=True)]
        if self.cpu:
            args += [*train_overrides(self.options.demo.model), "model.template_args.system_prompt=null"]
        else:
            args.append(f"model.model_args.pretrained_model_name_or_path={self.runs.original_model(split)}")
            args += NO_TRAIN_EVAL
        logs = self.runs.retain_logs(split)
        if logs is not None:
            args.append(f"retain_logs_path={logs}")
        args += self.method_args(method, split)
        if teacher is not None:
            args.append(f"trainer.method_args.teacher={teacher}")
        args = with_overrides(args, self.options.overrides)
        args.append(f"paths.output_dir={output}")
        self.launcher.add("train", run, "train", args, self.processes(method), [teacher] if teacher else [])
        return output

    # -- evaluation ------------------------------------------------------------------------------------------
    def eval_args(
        self, split: str, run: str, model: str | Path, output: Path, robustness: bool, retain_logs: bool = True
    ) -> list[str]:
        kind = "robustness" if robustness else "default"
        args = [f"experiment=eval/{self.benchmark}/{kind}", f"task_name={run}", f"model={self.runs.model}"]
        args += self.runs.split_args(split, train=False)
        # OU would otherwise reuse the metrics an earlier run left in the folder (e.g. before a retrained model).
        args.append(f"eval.{EVAL_NODES[self.benchmark]}.overwrite=true")
        if self.cpu:
            args += [*eval_overrides(model), "model.template_args.system_prompt=null"]
            args += _CPU_EVAL[self.benchmark](self.options, robustness)
        else:
            args.append(f"model.model_args.pretrained_model_name_or_path={model}")
        if robustness and self.options.robustness_without:
            args = without_metrics(args, self.benchmark, self.options.robustness_without)
        logs = self.runs.retain_logs(split) if retain_logs else None
        if logs is not None:
            args.append(f"retain_logs_path={logs}")
        return [*args, f"paths.output_dir={output}"]

    def evaluate(
        self, split: str, label: str, model: str | Path, trained: bool, kinds: Sequence[str] = ("eval", "robustness")
    ) -> None:
        run = self.runs.name(split, label)
        run_dir = self.options.output_root / run
        needs = [Path(model)] if trained else []
        # The retain-only model is the reference: it is evaluated without one (OU: privleak against 0.5).
        reference = label != RETAIN_ONLY
        if reference and self.cpu and self.benchmark == "muse":  # made by this grid's retain-only step
            needs.append(self.runs.retain_logs(split))
        if "eval" in kinds:
            args = self.eval_args(split, run, model, run_dir / "evals", False, reference)
            self.launcher.add("eval", run, "eval", args, 1, needs)
        if "robustness" not in kinds:
            return
        args = self.eval_args(split, run, model, run_dir / "evals_robustness", True, reference)
        if self.benchmark != "wmdp" and label != ORIGINAL:
            # The original model's logs give the relearning recovery and the performance shift.
            original = (
                self.runs.folder(split, ORIGINAL) / "evals_robustness" / f"{EVALUATORS[self.benchmark]}_EVAL.json"
            )
            args.insert(-1, f"original_logs_path={original}")
            needs = [*needs, original]
        self.launcher.add("robustness", run, "eval", args, 1, needs)

    # -- the grid --------------------------------------------------------------------------------------------
    def variant(self, label: str) -> str:
        """A trained run's label: ``label``, or ``label-<tag>`` for a variant (``--override``/``--tag``)."""
        return f"{label}-{self.options.tag}" if self.options.tag else label

    def build(self) -> Grid:
        options = self.options
        unlearners = [m for m in options.methods if not m.robustifies]
        robustifiers = [m for m in options.methods if m.robustifies]
        # On the CPU MUSE grid the retain-only model's evaluation is privleak's reference (as the retrained model's
        # logs in OU's scripts), so it comes first; its robustness needs the original's logs. On WMDP it is the
        # floor the forget task is read against (a model that never saw the forget facts).
        stand_ins = self.cpu and self.benchmark in ("muse", "wmdp")
        if stand_ins:
            write = demo_muse_files if self.benchmark == "muse" else demo_wmdp_files
            self.files.update(write(options.demo.workdir, options.demo.demo_split, options.splits))
        for split in options.splits:
            if stand_ins:
                self.evaluate(split, RETAIN_ONLY, options.demo.retain_model, trained=False, kinds=("eval",))
            self.evaluate(split, ORIGINAL, self.runs.original_model(split), trained=False)
            # The attacks' floor: what a model that never saw the forget facts reaches (on TOFU the demo has a
            # retain-only model for its own split only).
            if stand_ins or (self.cpu and split == options.demo.demo_split):
                self.evaluate(split, RETAIN_ONLY, options.demo.retain_model, trained=False, kinds=("robustness",))
            outputs = {}
            for method in unlearners:
                label = self.variant(method.name)
                outputs[method.name] = self.train(method, split, label)
                self.evaluate(split, label, outputs[method.name], trained=True)
            for method in robustifiers:
                for teacher in options.undo_teachers:
                    label = self.variant(f"{method.name}-{teacher}")
                    output = self.train(
                        method, split, label, teacher=outputs.get(teacher) or self.runs.folder(split, teacher)
                    )
                    self.evaluate(split, label, output, trained=True)
        notes = self.prerequisites(unlearners, robustifiers)
        return Grid(self.benchmark, options.profile, self.launcher.steps, self.files, notes)

    def prerequisites(self, unlearners: list[Method], robustifiers: list[Method]) -> list[str]:
        options, notes = self.options, []
        trained = {m.name for m in unlearners}
        missing = [t for t in options.undo_teachers if robustifiers and t not in trained]
        if missing:
            verb = "robustifies" if len(robustifiers) == 1 else "robustify"
            notes.append(
                f"{_and([m.name for m in robustifiers])} {verb} {', '.join(missing)}, not in --methods: their outputs "
                f"must already exist under {options.output_root}"
            )
        if self.cpu:
            notes.append(self.demo_note())
            return notes
        if self.benchmark != "wmdp":
            where = options.retain_logs_dir or options.ou_root / "saves" / "eval"
            notes.append(f"reference-model logs for forget_quality under {where} (in OU: setup_data.py --eval_logs)")
        notes += list(dict.fromkeys(m.prerequisite for m in options.methods if m.prerequisite))
        if self.benchmark == "wmdp":
            notes.append("WMDP corpora in data/wmdp/wmdp-corpora (in OU: python setup_data.py --wmdp)")
        schedule = GPU_SCHEDULES[self.benchmark]
        if schedule.accelerate:
            batch = schedule.per_device_train_batch_size * schedule.gradient_accumulation_steps * schedule.gpus
            ours, robustifying = _plugin_names(self.benchmark, options.trainer_config_dirs)
            included = f", {_and(ours)} included," if ours else ","
            keep = "keeps its" if len(robustifying) == 1 else "keep their"
            notes.append(
                f"effective batch {batch} for every method, as OU's script ({schedule.gpus} GPUs): every method runs "
                f"under accelerate launch (DeepSpeed ZeRO-3) on {options.num_gpus} GPU(s){included} with the gradient "
                "accumulation that keeps that batch (a LoRA method, refused under ZeRO-3, would run as one process on "
                "GPU 0)"
                + (f"; {_and(robustifying)} {keep} experiment's learning rate and steps" if robustifying else "")
            )
        return notes

    def demo_note(self) -> str:
        demo = self.options.demo
        if self.benchmark == "tofu":
            return (
                f"demo model {demo.model}; TOFU-layout data in {demo.workdir}/locuslab/TOFU; forget_quality needs a "
                f"retain-only reference, which the demo has for {demo.demo_split} only"
            )
        if self.benchmark == "muse":
            return (
                f"demo model {demo.model}; MUSE-layout stand-ins written to {demo.workdir}/muse-bench from the demo's "
                f"{demo.demo_split} authors (forget) and the others (retain); privleak's reference is the grid's "
                f"evaluation of the retain-only model {demo.retain_model}; knowmem runs zero-shot (the demo model "
                "answers nothing after in-context examples)"
            )
        return (
            f"demo model {demo.model}; WMDP-layout corpora written to {demo.workdir}/{WMDP_CORPORA} from the demo's "
            f"{demo.demo_split} authors (forget) and the others (retain); lm-eval tasks {DEMO_FORGET_TASK} and "
            f"{DEMO_GENERAL_TASK} in {demo.workdir / DEMO_MCQ_DIR} stand in for WMDP and MMLU (which are on "
            "the Hub); the 80-step budget of the WMDP experiments is lifted for the demo's 10 epochs"
        )


def build_grid(options: GridOptions) -> Grid:
    """The grid of ``options`` (see the module docstring); raises ``ValueError`` on bad combinations."""
    if options.benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {options.benchmark!r}; one of {', '.join(BENCHMARKS)}.")
    if options.profile not in PROFILES:
        raise ValueError(f"Unknown profile {options.profile!r}; one of {', '.join(PROFILES)}.")
    if options.profile == "cpu" and options.demo is None:
        raise ValueError("--profile cpu needs --demo-workdir: a finished `duet-plugin demo` folder.")
    bad = sorted(set(options.stages) - set(STAGES))
    if bad:
        raise ValueError(f"Unknown stage(s) {bad}; valid stages: {', '.join(STAGES)}.")
    if options.num_gpus < 1:
        raise ValueError(f"--num-gpus must be at least 1, got {options.num_gpus}.")
    check_variant(options.overrides, options.tag)
    known = robustness_metrics(options.benchmark, options.profile)
    unknown = [name for name in options.robustness_without if name not in known]
    if unknown:
        raise ValueError(
            f"--robustness-without {' '.join(unknown)}: not a robustness metric of the {options.benchmark} grid "
            f"(--profile {options.profile}); choose from {', '.join(known)}."
        )
    dirs = options.trainer_config_dirs
    methods = resolve_methods(options.benchmark, None, dirs) if options.methods is None else list(options.methods)
    teachers = resolve_methods(options.benchmark, options.undo_teachers, dirs)
    robustifier = next((m.name for m in teachers if m.robustifies), None)
    if robustifier is not None:
        raise ValueError(
            f"{robustifier} cannot be its own teacher; name the unlearning methods whose outputs it robustifies."
        )
    options = replace(options, methods=methods, undo_teachers=tuple(m.name for m in teachers))
    return _GridBuilder(options).build()


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
    ours, robustifiers = _plugin_names(benchmark)
    p = argparse.ArgumentParser(
        prog=f"reproduce_{benchmark}.py",
        description=f"Run {', '.join(ours)} and OU's baselines on {benchmark.upper()} with one model, data and "
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
        help=f"methods whose outputs {_and(robustifiers)} robustifies (default: {' '.join(UNDO_TEACHERS[benchmark])})",
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
    p.add_argument(
        "--override",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra overrides for every training command, in place of the grid's own value of the same key "
        "(e.g. trainer.method_args.balance=none trainer.args.seed=1); needs --tag",
    )
    p.add_argument(
        "--tag", help="names a variant's trained runs <method>-TAG (with --override); the original and retain-only "
        "evaluations are shared with the grid"
    )  # fmt: skip
    p.add_argument(
        "--robustness-without",
        nargs="+",
        default=[],
        metavar="METRIC",
        help="robustness metrics to leave out (e.g. embedding_attack relearn_heldout: the two that fit a model, most "
        "of the suite's time on a real model on the CPU)",
    )
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
        overrides=tuple(args.override),
        tag=args.tag,
        robustness_without=tuple(args.robustness_without),
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
