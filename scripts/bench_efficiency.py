"""Efficiency of DUET, BiDistill and UNDO against OU's baselines: step time and peak memory on the same model and the
same forget+retain example pairs (the unit OU's unlearning trainers consume). Prints markdown tables.

Needs an OpenUnlearning checkout (``--ou-root`` or ``$OU_ROOT``). Builds the demo's fictitious-author TOFU data
(forget10 / retain90) and a random Llama of the demo's size (step time does not depend on the weights), constructs
every trainer in-process inside OU, and runs ``Trainer.training_step`` + the AdamW step on identical pre-drawn
batches of ``--batch-size`` forget+retain pairs:

- OU's GradDiff (NLL retain: the two-stream floor), GradDiff (KL retain), NPO and UNDIAL with OU's default
  ``method_args`` (``configs/trainer/*.yaml``), and plain SFT (OU's FinetuneTrainer, NLL) on the same 2B examples
  in one batch;
- ours: DUET with precomputed targets, DUET with the online teacher, both again with LoRA r=8 on q,v (the teacher:
  the same model with its adapters disabled), BiDistill (defaults: precomputed, store_top_k 256) and UNDO
  (teacher = the same model saved to disk). UNDO distils on the retain stream only: its batch is the pairs' B
  retain examples plus B more retain examples (2B sequences, as many as a pair batch holds).

Step time: methods are interleaved step by step (round-robin, order rotated every step) so that machine noise hits
all alike; after a warmup (default: one untimed pass over the batches), ``--repeats`` passes over the same
``--steps`` batches; each pass gives a median per method, the tables show the median of those and their range, and
ratios are taken per pass. Wall-clock and process CPU time are both recorded.
The one-off precomputation of DUET's / BiDistill's targets is excluded from step time and reported on its own.

Memory (CPU): ``held`` = bytes of the tensors the trainer keeps between steps (trainable model, frozen reference or
teacher copies, AdamW state, the precomputed target store); ``peak`` = held + the peak of torch's CPU allocations
during one profiled step (``torch.profiler`` memory events: every tensor the step allocates, freed or not). This is
the CPU analogue of ``torch.cuda.max_memory_allocated`` (no allocator caching, no Python/process overhead). On a
CUDA machine the script uses ``torch.cuda.max_memory_allocated`` around one step instead.

Scaling: GradDiff (NLL) vs DUET precomputed vs DUET online with the question and answer texts repeated
``--length-factors`` times, and with the vocabulary grown to ``--vocabs`` (embedding/LM head resized; the extra
rows are never input tokens but every logit row is computed, as with a real vocabulary of that size).

Real shapes: ``--shape llama-3.2-1b`` builds a random Llama of Llama-3.2-1B's shape (hidden 2048, 32 / 8 KV heads,
MLP 8192, 128,256-token vocabulary, tied embeddings, rope_theta 500,000, sdpa) with the demo's tokenizer, ``--layers``
of its 16 layers; ``--dtype bfloat16`` trains in OU's default precision (bf16 weights, bf16 autocast);
``--sequential`` measures one method at a time when every trainer does not fit at once; ``--against`` adds step-time
and peak-memory ratios against several baselines. ``scripts/gpu/bench_llama1b.py`` runs it on a GPU.

    python scripts/bench_efficiency.py --ou-root /path/to/open-unlearning [--batch-size 8] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from duet_plugin.benchmarking import (
    Spread,
    format_bytes,
    markdown_table,
    peak_of_trace,
    ratio_spread,
    rotated,
    spread,
    step_spread,
    target_verdict,
)

BASELINE = "GradDiff (NLL retain)"
TEMPLATE = {"apply_chat_template": True, "system_prompt": "You are a helpful assistant."}
PREFIX = {"name": "forget_authors"}  # as experiment=unlearn/tofu/duet
LORA = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}  # the README's example (the teacher: no copy)

# Real model shapes for ``--shape`` (random weights; ``--layers`` keeps only the first few layers' worth of depth):
# Llama-3.2-1B's config.json (hidden 2048, 32 heads / 8 KV heads of 64, MLP 8192, 16 layers, 128,256-token vocabulary,
# tied embeddings, rope_theta 500,000 with the llama3 RoPE scaling), and a miniature of it with the same structure
# (grouped-query attention 4:1, tied, the same RoPE) for dry runs and tests.
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "rope_theta": 500000.0,
        "rope_scaling": LLAMA3_ROPE,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    },
    "llama-3.2-1b-mini": {
        "vocab_size": 4096,
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "rope_theta": 500000.0,
        "rope_scaling": LLAMA3_ROPE,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    },
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def shape_config(shape: str, tokenizer: Any, layers: int | None = None, vocab: int | None = None) -> Any:
    """A ``LlamaConfig`` of ``SHAPES[shape]`` with ``layers`` layers and a ``vocab``-token vocabulary (default: the
    shape's); the special-token ids are the (smaller) tokenizer's, whose ids are all below the vocabulary size."""
    from transformers import LlamaConfig

    spec = dict(SHAPES[shape])
    if layers is not None:
        spec["num_hidden_layers"] = layers
    if vocab is not None:
        spec["vocab_size"] = vocab
    if spec["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocabulary {spec['vocab_size']} is below the tokenizer's {len(tokenizer)} tokens")
    return LlamaConfig(
        **spec,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def shape_line(shape: str, layers: int, vocab: int) -> str:
    s = SHAPES[shape]
    return (
        f"random Llama of {shape}'s shape: hidden {s['hidden_size']}, {s['num_attention_heads']} heads / "
        f"{s['num_key_value_heads']} KV heads, MLP {s['intermediate_size']}, {layers} of {s['num_hidden_layers']} "
        f"layers, vocabulary {vocab:,}, tied embeddings, rope_theta {s['rope_theta']:,.0f}"
    )


@dataclass(frozen=True)
class Method:
    """One trainer to measure. ``batch``: ``pairs`` (forget+retain pairs), ``flat`` (the pairs' 2B examples in one
    batch) or ``retain2x`` (2B retain examples); ``frozen``: the streams a frozen model also runs a forward on."""

    label: str
    handler: str
    batch: str = "pairs"
    method_args: dict[str, Any] = field(default_factory=dict)
    frozen: tuple[str, ...] = ()
    precompute: bool = False


def ou_method_args(ou_root: Path, name: str) -> dict[str, Any]:
    """OU's default ``method_args`` of ``configs/trainer/<name>.yaml`` (with those of its parent config)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ou_root / "configs" / "trainer" / f"{name}.yaml")
    parents = [d for d in cfg.get("defaults", []) if isinstance(d, str) and d not in ("finetune", "_self_")]
    merged: dict[str, Any] = {}
    for parent in parents:
        merged.update(ou_method_args(ou_root, parent))
    merged.update(OmegaConf.to_container(cfg.get("method_args", {}), resolve=True) or {})
    return merged


def all_methods(ou_root: Path, teacher_dir: Path) -> list[Method]:
    """The full comparison, in table order."""
    graddiff = ou_method_args(ou_root, "GradDiff")
    return [
        Method(BASELINE, "GradDiff", method_args=graddiff),
        Method(
            "GradDiff (KL retain)", "GradDiff", method_args={**graddiff, "retain_loss_type": "KL"}, frozen=("retain",)
        ),
        Method("NPO", "NPO", method_args=ou_method_args(ou_root, "NPO"), frozen=("forget",)),
        Method("UNDIAL", "UNDIAL", method_args=ou_method_args(ou_root, "UNDIAL"), frozen=("forget",)),
        Method("SFT (NLL, forget+retain in one batch)", "FinetuneTrainer", batch="flat"),
        Method("DUET precomputed", "DUET", method_args={"prefix": PREFIX}, precompute=True),
        Method(
            "DUET online", "DUET", method_args={"prefix": PREFIX, "teacher_mode": "online"}, frozen=("forget", "retain")
        ),
        Method("DUET precomputed, LoRA", "DUET", method_args={"prefix": PREFIX, "lora": LORA}, precompute=True),
        Method(
            "DUET online, LoRA",
            "DUET",
            method_args={"prefix": PREFIX, "teacher_mode": "online", "lora": LORA},
            frozen=("forget", "retain"),
        ),
        Method("BiDistill", "BiDistill", method_args={"prefix": PREFIX}, precompute=True),
        Method(
            "UNDO (2B retain examples)",
            "UNDO",
            batch="retain2x",
            method_args={"teacher": str(teacher_dir)},
            frozen=("retain",),
        ),
    ]


# -- machine ---------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: torch.device) -> str:
    import transformers

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {cpu_model()}"
    return (
        f"{where}, {os.cpu_count()} logical cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, Python {platform.python_version()}, {platform.system()}"
    )


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


# -- measured trainer ------------------------------------------------------------------------------------------
@dataclass
class Entry:
    """A built trainer, its optimizer and its batches (one per step), with what was measured."""

    method: Method
    trainer: Any
    batches: list[Any]
    tokens: tuple[int, int]  # padded tokens per step through the trainable model / through frozen models
    total: list[list[float]] = field(default_factory=list)  # per repeat: full step seconds
    fwdbwd: list[list[float]] = field(default_factory=list)  # per repeat: training_step only (wall)
    cpu: list[list[float]] = field(default_factory=list)  # per repeat: full step, process CPU seconds
    memory: dict[str, int] = field(default_factory=dict)
    precompute: dict[str, Any] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_step(entry: Entry, batch: Any, device: torch.device) -> tuple[float, float, float]:
    """One training step (forward + backward via ``Trainer.training_step``, AdamW step, zero_grad): wall seconds of
    the whole step and of ``training_step`` alone, and the process CPU seconds of the whole step."""
    t = entry.trainer
    _sync(device)
    cpu = time.process_time()
    start = time.perf_counter()
    t.training_step(t.model, batch)
    _sync(device)
    mid = time.perf_counter()
    t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    _sync(device)
    end = time.perf_counter()
    return end - start, mid - start, time.process_time() - cpu


def _storages(tensors: Any) -> dict[int, int]:
    return {x.untyped_storage().data_ptr(): x.untyped_storage().nbytes() for x in tensors if x is not None}


def held_bytes(trainer: Any) -> dict[str, int]:
    """Bytes of the tensors a trainer keeps between steps, by kind (storages counted once). Frozen models are the
    trainer's ``nn.Module`` attributes (OU's ``ref_model``, our ``teacher_model``)."""
    modules = [trainer.model] + [v for k, v in vars(trainer).items() if isinstance(v, torch.nn.Module) and k != "model"]
    weights: dict[int, int] = {}
    for module in modules:
        weights.update(_storages([*module.parameters(), *module.buffers()]))
    state = trainer.optimizer.state.values() if getattr(trainer, "optimizer", None) is not None else []
    optim = _storages(v for s in state for v in s.values() if isinstance(v, torch.Tensor))
    store = getattr(trainer, "targets", None)
    student = sum(_storages([*trainer.model.parameters(), *trainer.model.buffers()]).values())
    out = {
        "student": student,
        "frozen": sum(weights.values()) - student,
        "optimizer": sum(v for k, v in optim.items() if k not in weights),
        "store": store.nbytes() if store is not None and hasattr(store, "nbytes") else 0,
    }
    out["held"] = sum(out.values())
    return out


def step_peak_bytes(entry: Entry, batch: Any, device: torch.device) -> int:
    """Peak bytes allocated during one step beyond what was allocated before it."""
    t = entry.trainer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run_step(entry, batch, device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        t.training_step(t.model, batch)
        t.optimizer.step()
        t.optimizer.zero_grad(set_to_none=True)
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and "CPU" in str(e.device_type())),
        key=lambda e: e.start_ns(),
    )
    return peak_of_trace(e.nbytes() for e in events)


def measure_memory(entry: Entry, device: torch.device) -> None:
    """``held`` (by kind), the step's own allocation peak and ``peak`` = held + step peak (on CUDA the step peak is
    ``max_memory_allocated`` minus what was allocated before the step)."""
    entry.memory = held_bytes(entry.trainer)
    entry.memory["step"] = step_peak_bytes(entry, entry.batches[0], device)
    entry.memory["peak"] = entry.memory["held"] + entry.memory["step"]


def interleaved(entries: Sequence[Entry], warmup: int, steps: int, repeats: int, device: torch.device) -> None:
    """Warm up, then ``repeats`` passes over the same ``steps`` batches, one step of every method in turn (the
    order rotated each step)."""
    for i in range(warmup):
        for e in rotated(entries, i):
            run_step(e, e.batches[i % len(e.batches)], device)
    for rep in range(repeats):
        got: dict[int, list[tuple[float, float, float]]] = {id(e): [] for e in entries}
        for s in range(steps):
            for e in rotated(entries, s + rep):
                got[id(e)].append(run_step(e, e.batches[s % len(e.batches)], device))
        for e in entries:
            total, fwdbwd, cpu = (list(col) for col in zip(*got[id(e)], strict=True))
            e.total.append(total)
            e.fwdbwd.append(fwdbwd)
            e.cpu.append(cpu)


# -- data, models, trainers ------------------------------------------------------------------------------------
class Bench:
    """Everything one configuration (text length factor, vocabulary size) needs to build trainers."""

    def __init__(
        self,
        args: argparse.Namespace,
        workdir: Path,
        rows: dict[str, list[dict]],
        tokenizer: Any,
        length_factor: int,
        vocab: int,
        device: torch.device,
    ) -> None:
        from data.qa import QADataset

        self.args, self.tokenizer, self.vocab, self.device = args, tokenizer, vocab, device
        self.length_factor = length_factor
        self.dir = workdir / f"len{length_factor}_vocab{vocab}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.qa: dict[str, Any] = {}
        for split, split_rows in rows.items():
            path = self.dir / f"{split}.json"
            path.write_text(
                json.dumps(
                    [
                        {
                            **r,
                            "question": " ".join([r["question"]] * length_factor),
                            "answer": " ".join([r["answer"]] * length_factor),
                        }
                        for r in split_rows
                    ]
                )
            )
            self.qa[split] = QADataset(
                hf_args={"path": "json", "data_files": str(path), "split": "train"},
                template_args=TEMPLATE,
                tokenizer=tokenizer,
            )
        self.forget, self.retain = self.qa["forget"], self.qa["retain"]
        self.teacher_dir = self.dir / "teacher"  # UNDO's teacher, written when UNDO is built (see save_teacher)
        # Pre-drawn example indices, one batch per step: B forget (a seeded permutation, cycled), B retain, B more
        # retain (UNDO's second half).
        rng = random.Random(args.seed)
        order = list(range(len(self.forget)))
        rng.shuffle(order)
        b = args.batch_size
        self.plan = [
            (
                [order[(s * b + i) % len(order)] for i in range(b)],
                [rng.randrange(len(self.retain)) for _ in range(b)],
                [rng.randrange(len(self.retain)) for _ in range(b)],
            )
            for s in range(args.steps)
        ]

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[getattr(self.args, "dtype", "float32")]

    def save_teacher(self) -> None:
        """UNDO's teacher: the same model, saved once (in float32 unless --dtype says otherwise)."""
        if not (self.teacher_dir / "config.json").is_file():
            self.model().save_pretrained(self.teacher_dir)
            self.tokenizer.save_pretrained(self.teacher_dir)

    def model(self) -> Any:
        if self.device.type != "cuda":
            return self._model().to(self.dtype)
        # On a GPU machine: build (slow for a 1B model on its CPU) once, then copy; the weights are the same anyway.
        if getattr(self, "_base", None) is None:
            self._base = self._model().to(self.dtype)
        return copy.deepcopy(self._base)

    def _model(self) -> Any:
        if self.args.model:  # a real model (e.g. duet-plugin model smollm2): its own weights and vocabulary
            from transformers import AutoModelForCausalLM

            return AutoModelForCausalLM.from_pretrained(self.args.model, torch_dtype=torch.float32)
        if getattr(self.args, "shape", None):  # a real model's shape, random weights, built at the vocabulary size
            from transformers import LlamaForCausalLM

            torch.manual_seed(0)
            config = shape_config(self.args.shape, self.tokenizer, self.args.layers, self.vocab)
            config._attn_implementation = getattr(self.args, "attn", "sdpa")
            return LlamaForCausalLM(config)
        from duet_plugin.demo.tiny_llama import build_tiny_llama

        model = build_tiny_llama(self.tokenizer, hidden_size=self.args.hidden, num_layers=self.args.layers, seed=0)
        if self.vocab > len(self.tokenizer):
            params = inspect.signature(model.resize_token_embeddings).parameters
            extra = {"mean_resizing": False} if "mean_resizing" in params else {}
            model.resize_token_embeddings(self.vocab, **extra)
        elif self.vocab < len(self.tokenizer):
            raise ValueError(f"--vocab {self.vocab} is below the tokenizer's {len(self.tokenizer)} tokens")
        return model

    def trainer(self, method: Method) -> Any:
        from data.collators import DataCollatorForSupervisedDataset
        from data.unlearn import ForgetRetainDataset
        from trainer import TRAINER_REGISTRY
        from transformers import TrainingArguments

        torch.manual_seed(0)
        targs = TrainingArguments(
            output_dir=str(self.dir / "out" / method.handler),
            report_to="none",
            use_cpu=self.device.type != "cuda",
            per_device_train_batch_size=self.args.batch_size,
            remove_unused_columns=False,
            learning_rate=1e-5,
            save_strategy="no",
            bf16=self.dtype == torch.bfloat16,  # OU's default precision: bf16 weights and bf16 autocast
        )
        t = TRAINER_REGISTRY[method.handler](
            model=self.model(),
            args=targs,
            train_dataset=ForgetRetainDataset(self.forget, self.retain),
            tokenizer=self.tokenizer,
            data_collator=DataCollatorForSupervisedDataset(tokenizer=self.tokenizer),
            template_args=TEMPLATE,
            evaluators=None,
            **copy.deepcopy(method.method_args),
        )
        t.model.to(self.device)
        t.model.train()
        t.create_optimizer()
        return t

    def batches(self, method: Method, t: Any) -> list[Any]:
        """The trainer's own collation of the planned examples, one batch per step."""
        out = []
        for forget_ids, retain_ids, extra_ids in self.plan:
            if method.batch == "pairs":
                ds = t.train_dataset  # DUET/BiDistill hold it converted to unified records, same order
                streams = getattr(ds, "streams", None) or {"forget": ds.forget, "retain": ds.retain}
                items = [
                    {"forget": streams["forget"][f], "retain": streams["retain"][r]}
                    for f, r in zip(forget_ids, retain_ids, strict=True)
                ]
            elif method.batch == "flat":
                items = [self.forget[f] for f in forget_ids] + [self.retain[r] for r in retain_ids]
            else:
                items = [t.train_dataset[r] for r in [*retain_ids, *extra_ids]]
            out.append(t.data_collator(items))
        return out

    def build(self, method: Method) -> Entry:
        if method.handler == "UNDO":
            self.save_teacher()
        t = self.trainer(method)
        batches = self.batches(method, t)
        entry = Entry(method, t, batches, padded_tokens(method, batches[0]))
        if method.precompute:
            entry.precompute = self.precompute(t)
        return entry

    def precompute(self, t: Any) -> dict[str, Any]:
        """The first (cold) target precomputation, kept for training; warm repeats come after the timed steps."""
        gc.collect()
        start = time.perf_counter()
        t.targets = t.precompute_targets(every_query=True)  # the bench draws its own batches
        return {
            "cold": time.perf_counter() - start,
            "seconds": [],
            "bytes": t.targets.nbytes(),
            "queries": len(t.targets),
        }


def time_precompute(entries: Sequence[Entry], repeats: int) -> None:
    """Re-time the one-off precomputation ``repeats`` times per method, interleaved (the store is rebuilt the same)."""
    pre = [e for e in entries if e.method.precompute]
    for r in range(repeats):
        for e in rotated(pre, r):
            gc.collect()
            start = time.perf_counter()
            e.trainer.targets = e.trainer.precompute_targets(every_query=True)  # the bench draws its own batches
            e.precompute["seconds"].append(time.perf_counter() - start)


def padded_tokens(method: Method, batch: dict[str, Any]) -> tuple[int, int]:
    """Padded tokens per step through the trainable model and through frozen models (what the compute sees)."""

    def numel(b: dict[str, Any], key: str) -> int:
        return int(b[key].numel()) if key in b else 0

    if "input_ids" in batch:  # flat (SFT, UNDO)
        n = numel(batch, "input_ids")
        return n, n if method.frozen else 0
    trainable = frozen = 0
    for stream, b in batch.items():
        if "student_input_ids" in b:  # DUET/BiDistill views
            trainable += numel(b, "student_input_ids")
            frozen += numel(b, "teacher_input_ids") if stream in method.frozen else 0
        else:
            trainable += numel(b, "input_ids")
            frozen += numel(b, "input_ids") if stream in method.frozen else 0
    return trainable, frozen


def release(entry: Entry, device: torch.device) -> None:
    """Drop a measured trainer (model, frozen copies, optimizer state, batches), keeping its figures."""
    entry.trainer = None
    entry.batches = []
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_sequential(bench: Bench, methods: Sequence[Method], log: Callable[[str], None]) -> list[Entry]:
    """One method at a time (build, warm up, time, measure memory, precompute repeats, free): for models too large
    to hold every method's trainer at once. Machine noise then no longer hits all methods alike."""
    a = bench.args
    warmup = a.steps if a.warmup is None else a.warmup
    entries = []
    for m in methods:
        log(f"  {m.label}: build, {warmup} warmup + {a.repeats} x {a.steps} steps, memory")
        e = bench.build(m)
        interleaved([e], warmup, a.steps, a.repeats, bench.device)
        measure_memory(e, bench.device)
        if m.precompute and a.precompute_repeats:
            time_precompute([e], a.precompute_repeats)
        release(e, bench.device)
        median = step_spread(e.total).median
        log(f"  {m.label}: median step {median * 1000:.0f} ms, peak {format_bytes(e.memory['peak'])}")
        entries.append(e)
    return entries


def measure(bench: Bench, methods: Sequence[Method], log: Callable[[str], None]) -> list[Entry]:
    """Build every method's trainer, time them interleaved and measure memory (``--sequential``: one at a time)."""
    if getattr(bench.args, "sequential", False):
        return measure_sequential(bench, methods, log)
    entries = []
    for m in methods:
        log(f"  building {m.label}")
        entries.append(bench.build(m))
    a = bench.args
    log(f"  timing {len(entries)} methods: warmup + {a.repeats} x {a.steps} interleaved steps")
    warmup = a.steps if a.warmup is None else a.warmup
    interleaved(entries, warmup, a.steps, a.repeats, bench.device)
    log("  memory: one profiled step per method")
    for e in entries:
        measure_memory(e, bench.device)
    if any(e.method.precompute for e in entries) and a.precompute_repeats:
        log(f"  precompute: {a.precompute_repeats} warm repeats")
        time_precompute(entries, a.precompute_repeats)
    return entries


# -- tables ----------------------------------------------------------------------------------------------------
def ms(s: Spread) -> str:
    return s.format(1000, 1)


def x(s: Spread) -> str:
    return s.format(1, 2, "x")


def main_table(entries: Sequence[Entry]) -> str:
    base = next(e for e in entries if e.method.label == BASELINE)
    rows = []
    for e in entries:
        m = e.memory
        rows.append(
            [
                e.method.label,
                f"{e.tokens[0]:,} / {e.tokens[1]:,}",
                ms(step_spread(e.total)),
                x(ratio_spread(e.total, base.total)),
                ms(step_spread(e.cpu)),
                x(ratio_spread(e.cpu, base.cpu)),
                format_bytes(m["student"] + m["frozen"]),
                format_bytes(m["optimizer"] + m["store"]),
                format_bytes(m["step"]),
                format_bytes(m["peak"]),
                f"{m['peak'] / base.memory['peak']:.2f}x",
            ]
        )
    return markdown_table(
        [
            "method",
            "padded tokens/step: trainable / frozen fwd",
            "step ms (range over repeats)",
            "step vs GradDiff",
            "step CPU ms",
            "CPU vs GradDiff",
            "held: model copies",
            "held: AdamW state + store",
            "step allocations peak",
            "peak = held + step",
            "peak vs GradDiff",
        ],
        rows,
    )


def precompute_table(entries: Sequence[Entry]) -> str:
    base = step_spread(next(e for e in entries if e.method.label == BASELINE).total).median
    rows = []
    for e in entries:
        if not e.precompute:
            continue
        p = e.precompute
        warm = spread(p["seconds"]) if p["seconds"] else None
        rows.append(
            [
                e.method.label,
                p["queries"],
                f"{p['cold']:.2f} s",
                warm.format(1, 2, " s") if warm else "",
                f"{(warm.median if warm else p['cold']) / base:.0f}",
                format_bytes(p["bytes"]),
                f"{p['bytes'] / max(p['queries'], 1):,.0f} B",
            ]
        )
    return markdown_table(
        [
            "method",
            "queries",
            "first run (cold)",
            "repeats (warm)",
            "warm = GradDiff steps",
            "store",
            "store per query",
        ],
        rows,
    )


#: Issue 17's targets, against GradDiff (NLL retain) in the same interleaved run: DUET precomputed's step time at the
#: demo's size, and at a Llama-3-size vocabulary (>= 128,000 rows), its peak memory, DUET online's step time, and
#: BiDistill's step time against DUET precomputed's.
TARGETS = {"precomputed": 0.60, "precomputed_128k": 0.35, "peak": 0.60, "online": 1.15, "bidistill_vs_duet": 1.10}


def targets_table(entries: Sequence[Entry], vocab: int | None = None) -> str:
    by = {e.method.label: e for e in entries}
    base, pre, online = by[BASELINE], by["DUET precomputed"], by["DUET online"]
    step = TARGETS["precomputed_128k"] if (vocab or 0) >= 128_000 else TARGETS["precomputed"]
    checks = [
        ("DUET precomputed", "step time (wall)", step, ratio_spread(pre.total, base.total)),
        ("DUET precomputed", "step time (CPU)", step, ratio_spread(pre.cpu, base.cpu)),
        ("DUET precomputed", "peak memory", TARGETS["peak"], spread([pre.memory["peak"] / base.memory["peak"]])),
        ("DUET online", "step time (wall)", TARGETS["online"], ratio_spread(online.total, base.total)),
        ("DUET online", "step time (CPU)", TARGETS["online"], ratio_spread(online.cpu, base.cpu)),
    ]
    if "BiDistill" in by:
        bi = by["BiDistill"]
        checks.append(
            (
                "BiDistill",
                "step time vs DUET precomputed",
                TARGETS["bidistill_vs_duet"],
                ratio_spread(bi.total, pre.total),
            )
        )
    rows = [
        [label, what, f"<= {limit:.2f}x", value.format(1, 2, "x"), target_verdict(value, limit)]
        for label, what, limit, value in checks
    ]
    return markdown_table(["method", "figure", "target", "measured (range over repeats)", "verdict"], rows)


def scaling_table(results: Sequence[tuple[str, Sequence[Entry]]]) -> str:
    rows = []
    for config, entries in results:
        base = next(e for e in entries if e.method.label == BASELINE)
        for e in entries:
            pre = e.precompute
            rows.append(
                [
                    config,
                    e.method.label,
                    f"{e.tokens[0]:,} / {e.tokens[1]:,}",
                    ms(step_spread(e.total)),
                    x(ratio_spread(e.total, base.total)),
                    x(ratio_spread(e.cpu, base.cpu)),
                    format_bytes(e.memory["peak"]),
                    f"{e.memory['peak'] / base.memory['peak']:.2f}x",
                    (
                        f"{spread(pre['seconds'] or [pre['cold']]).median:.2f} s, {format_bytes(pre['bytes'])}"
                        if pre
                        else ""
                    ),
                ]
            )
    return markdown_table(
        [
            "config",
            "method",
            "padded tokens/step: trainable / frozen",
            "step ms (wall)",
            "wall vs GradDiff",
            "CPU vs GradDiff",
            "peak",
            "vs GradDiff",
            "precompute, store",
        ],
        rows,
    )


def against_table(entries: Sequence[Entry], baselines: Sequence[str]) -> str:
    """Every method's step time (wall; per-repeat ratios, median and range) and peak memory against each of
    ``baselines`` (method labels; those not measured are left out)."""
    by = {e.method.label: e for e in entries}
    bases = [by[b] for b in baselines if b in by]
    rows = []
    for e in entries:
        row = [e.method.label, ms(step_spread(e.total)), format_bytes(e.memory["peak"])]
        for b in bases:
            row += [x(ratio_spread(e.total, b.total)), f"{e.memory['peak'] / b.memory['peak']:.2f}x"]
        rows.append(row)
    header = ["method", "step ms (wall)", "peak"]
    for b in bases:
        header += [f"step vs {b.method.label}", f"peak vs {b.method.label}"]
    return markdown_table(header, rows)


def raw(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    return [
        {
            "method": e.method.label,
            "tokens": e.tokens,
            "total_s": e.total,
            "fwdbwd_s": e.fwdbwd,
            "cpu_s": e.cpu,
            "memory": e.memory,
            "precompute": e.precompute,
        }
        for e in entries
    ]


# -- main ------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ou-root", default=os.environ.get("OU_ROOT"))
    parser.add_argument(
        "--model",
        default=None,
        help="a real model folder (e.g. from `duet-plugin model smollm2`) with its tokenizer, instead of a random "
        "Llama of --hidden/--layers (the vocabulary scaling runs are then skipped)",
    )
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default=None,
        help="a random Llama of a real model's shape (Llama-3.2-1B: hidden 2048, 32/8 heads, MLP 8192, vocabulary "
        "128,256, tied, rope_theta 500000; -mini: the same structure, tiny) with the demo's tokenizer; --layers "
        "keeps that many layers (default: all), --vocab overrides the vocabulary",
    )
    parser.add_argument("--hidden", type=int, default=None, help="hidden size of the random Llama (default 128)")
    parser.add_argument("--layers", type=int, default=None, help="layers (default: 4, or all of --shape's)")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="model weights' dtype; bfloat16 also turns on the Trainer's bf16 autocast (OU's default precision)",
    )
    parser.add_argument(
        "--attn", default="sdpa", help="attention implementation of the --shape model (the default Llama keeps eager)"
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="measure one method at a time and free it before the next (for models too large to hold every "
        "method's trainer at once); default: all trainers held, steps interleaved",
    )
    parser.add_argument(
        "--against",
        nargs="*",
        default=[],
        help="also print step time and peak memory of every method against each of these method labels",
    )
    parser.add_argument(
        "--vocab",
        type=int,
        default=None,
        help="model vocabulary of the main comparison (default: the tokenizer's, about 1,500)",
    )
    parser.add_argument("--tokenizer-vocab", type=int, default=1500, help="BPE vocabulary the tokenizer is trained to")
    parser.add_argument("--batch-size", type=int, default=8, help="forget+retain pairs per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat (distinct batches)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default: one pass over all --steps batches)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="passes over the same batches (the spread)")
    parser.add_argument("--precompute-repeats", type=int, default=3)
    parser.add_argument(
        "--length-factors",
        type=int,
        nargs="*",
        default=[1, 2, 4],
        help="scaling: question and answer texts repeated this many times (empty: skip)",
    )
    parser.add_argument(
        "--vocabs",
        type=int,
        nargs="*",
        default=[8000, 32000],
        help="scaling: model vocabulary sizes beyond the main one (empty: skip)",
    )
    parser.add_argument("--scaling-steps", type=int, default=None, help="timed steps per repeat in the scaling runs")
    parser.add_argument("--only", nargs="*", default=None, help="main comparison: only these method labels")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is available")
    parser.add_argument("--json", default=None, help="also write every raw timing and memory figure here")
    args = parser.parse_args()
    if args.shape and (args.model or args.hidden is not None):
        parser.error("--shape sets the model's size: use --layers / --vocab, not --model or --hidden")
    if args.hidden is None:
        args.hidden = 128
    if args.layers is None and not args.shape:
        args.layers = 4
    if args.shape and args.layers is None:
        args.layers = SHAPES[args.shape]["num_hidden_layers"]
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")

    workdir = Path(tempfile.mkdtemp(prefix="duet_bench_eff_"))
    os.environ["HF_DATASETS_CACHE"] = str(workdir / ".hf_datasets_cache")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from duet_plugin.demo.fictitious_authors import build_dataset
    from duet_plugin.demo.tiny_llama import build_tokenizer
    from duet_plugin.openunlearning.launcher import find_ou_root, import_framework

    ou_root = find_ou_root(args.ou_root)
    import_framework(ou_root)
    import transformers

    transformers.logging.set_verbosity_error()
    os.chdir(workdir)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    ds = build_dataset(n_authors=40, qa_per_author=5, seed=0)
    rows = {"forget": ds.configs["forget10"], "retain": ds.configs["retain90"]}
    texts = [f"{r['question']} {r['answer']}" for split in ds.configs.values() for r in split]
    if args.model:
        from transformers import AutoConfig, AutoTokenizer

        if args.vocab is not None:
            parser.error("--vocab resizes the random Llama; a --model keeps its own vocabulary")
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        vocab = AutoConfig.from_pretrained(args.model).vocab_size
        args.vocabs = []
    else:
        tokenizer = build_tokenizer(texts, vocab_size=args.tokenizer_vocab)
        vocab = args.vocab or (SHAPES[args.shape]["vocab_size"] if args.shape else len(tokenizer))
    scaling_steps = args.scaling_steps or args.steps
    started = time.time()
    header = [
        f"machine: {machine_line(device)}",
        f"at start: {load_line()}",
        f"model: {Path(args.model).name}, vocabulary {vocab}"
        if args.model
        else f"model: {shape_line(args.shape, args.layers, vocab)} (tokenizer: the demo's, {len(tokenizer)} tokens)"
        if args.shape
        else f"model: random Llama, hidden {args.hidden}, {args.layers} layers, vocabulary {vocab} "
        f"(tokenizer {len(tokenizer)})",
        f"data: fictitious-author TOFU forget10 ({len(rows['forget'])} QA) / retain90 ({len(rows['retain'])} QA); "
        f"{args.batch_size} forget+retain pairs per step",
        f"timing: {'one pass' if args.warmup is None else args.warmup} warmup + {args.repeats} repeats x "
        f"{args.steps} steps, "
        + (
            "one method at a time (--sequential: each trainer built, measured and freed in turn)"
            if args.sequential
            else "methods interleaved (round-robin, order rotated every step)"
        ),
    ]
    if args.dtype != "float32":
        header.append(f"precision: weights {args.dtype}, Trainer bf16 autocast on (OU's default)")
    for line in header:
        log(line)

    bench = Bench(args, workdir, rows, tokenizer, 1, vocab, device)
    methods = all_methods(ou_root, bench.teacher_dir)
    if args.only:
        unknown = sorted(set(args.only) - {m.label for m in methods})
        if unknown:
            parser.error(f"--only: unknown method label(s) {unknown}; the labels: {[m.label for m in methods]}")
        methods = [m for m in methods if m.label == BASELINE or m.label in args.only]
    missing = sorted(set(args.against) - {m.label for m in methods})
    if missing:
        parser.error(f"--against: {missing} not among the measured methods {[m.label for m in methods]}")
    log("main comparison")
    main_entries = measure(bench, methods, log)
    del bench
    gc.collect()

    scaling: list[tuple[str, list[Entry]]] = []
    trio = [m for m in methods if m.label in (BASELINE, "DUET precomputed", "DUET online")]
    configs = [(f, vocab) for f in args.length_factors] + [(1, v) for v in args.vocabs if v != vocab]
    saved_steps = args.steps
    args.steps = scaling_steps
    for factor, v in configs:
        if (factor, v) == (1, vocab):  # the main comparison already measured it
            scaling.append((f"text x1, vocab {vocab:,}", [e for e in main_entries if e.method in trio]))
            continue
        log(f"scaling: text x{factor}, vocabulary {v}")
        b = Bench(args, workdir, rows, tokenizer, factor, v, device)
        scaling.append((f"text x{factor}, vocab {v:,}", measure(b, trio, log)))
        del b
        gc.collect()
    args.steps = saved_steps

    minutes = (time.time() - started) / 60
    print()
    for line in header:
        print(f"- {line}")
    print(f"- at end: {load_line()}; {minutes:.1f} min")
    mem_note = (
        "CUDA max_memory_allocated during one step"
        if device.type == "cuda"
        else "torch CPU allocations (profiler memory events)"
    )
    print(f"\n### Per step, {args.batch_size} forget+retain pairs (memory: held tensors + {mem_note})\n")
    print(main_table(main_entries))
    print("\n### One-off target precomputation (not in step time)\n")
    print(precompute_table(main_entries))
    if all(label in {e.method.label for e in main_entries} for label in ("DUET precomputed", "DUET online")):
        print("\n### Targets\n")
        print(targets_table(main_entries, vocab))
    if args.against:
        print("\n### Against baselines (step time: per-repeat ratios, median and range; peak memory)\n")
        print(against_table(main_entries, args.against))
    if scaling:
        print(f"\n### Scaling ({args.repeats} repeats x {scaling_steps} steps each)\n")
        print(scaling_table(scaling))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "header": header,
                    "main": raw(main_entries),
                    "scaling": [{"config": c, "entries": raw(es)} for c, es in scaling],
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
