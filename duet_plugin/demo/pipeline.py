"""``duet-plugin demo``: the whole DUET story on a CPU in minutes, through OpenUnlearning's own scripts.

1. Writes the project's fictitious-author dataset in TOFU's layout, the demo fine-tuning sets (``demo_data``) and
   a tiny Llama with its own tokenizer.
2. Fine-tunes it with OU's finetune pipeline on all facts (``demo_full``), and a reference on the retain facts only
   (``demo_retain``, for forget_quality).
3. Evaluates with OU's TOFU evaluator: the fine-tuned model, the prompt-steered teacher (the fine-tuned model with
   the prefix before every question), DUET's student and OU's GradDiff after unlearning the forget split.
4. Prints one table (and writes it as markdown).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from duet_plugin.core.attacks.refusal import is_refusal
from duet_plugin.demo.demo_data import REFUSAL, DemoData, build_demo_data
from duet_plugin.demo.fictitious_authors import build_dataset, write_hub_layout
from duet_plugin.demo.tiny_llama import build_tiny_llama, build_tokenizer, save_model
from duet_plugin.openunlearning.cpu_overrides import eval_overrides, train_overrides
from duet_plugin.openunlearning.launcher import find_ou_root

MARKER = ".duet-plugin-demo"
SPLITS = {
    "forget01": ("retain99", "holdout01"),
    "forget05": ("retain95", "holdout05"),
    "forget10": ("retain90", "holdout10"),
}
#: OU baselines the demo scripts can run (``Demo.unlearn``), by lower-case name.
OU_TRAINERS = {"graddiff": "GradDiff", "npo": "NPO", "gradascent": "GradAscent", "simnpo": "SimNPO"}
_PROGRESS = re.compile(r"(\d+)%\|[^|]*\|\s*(\d+)/(\d+)")


class DemoStepFailed(RuntimeError):
    """An OU command of the demo failed; the message names its log."""


@dataclass
class DemoSettings:
    """Sizes and schedules of the demo (defaults: about 10 minutes on 2 CPU cores)."""

    n_authors: int = 40
    qa_per_author: int = 5
    forget_split: str = "forget05"
    seed: int = 0
    vocab_size: int = 1500
    hidden_size: int = 128
    num_layers: int = 4
    n_instruction_rows: int = 4000
    fact_repeats: int = 3
    paraphrase_repeats: int = 1
    finetune_steps: int = 1200
    finetune_lr: float = 3e-3
    finetune_batch_size: int = 32
    unlearn_epochs: int = 10
    unlearn_lr: float = 1e-3
    unlearn_batch_size: int = 8
    eval_max_new_tokens: int = 32
    extra_duet_overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.forget_split not in SPLITS:
            raise ValueError(f"forget_split must be one of {sorted(SPLITS)}, got {self.forget_split!r}.")


@dataclass
class ModelRow:
    label: str
    summary: dict[str, Any]
    details: dict[str, Any]


class Demo:
    """Runs the demo in ``workdir`` (created; an existing non-demo folder is never touched)."""

    def __init__(
        self,
        workdir: str | Path,
        ou_root: str | Path | None = None,
        settings: DemoSettings | None = None,
        overwrite: bool = False,
        out: IO[str] = sys.stdout,
        existing: bool = False,
    ) -> None:
        self.ou_root = find_ou_root(ou_root)
        self.workdir = Path(workdir).resolve()
        self.settings = settings or DemoSettings()
        self.out = out
        if existing:  # add runs to a finished demo: its files are kept, new runs get new names
            if not (self.workdir / MARKER).is_file():
                raise FileNotFoundError(
                    f"{self.workdir} is not a duet-plugin demo folder; run `duet-plugin demo` there first."
                )
        else:
            self._prepare_workdir(overwrite)
        self.logs = self.workdir / "logs"
        self.logs.mkdir(exist_ok=existing)
        self.retain_split, self.holdout_split = SPLITS[self.settings.forget_split]
        self._lock = threading.Lock()
        self._t0 = time.time()
        self._done = itertools.count(1)
        self._n_jobs = 9

    # -- workspace ---------------------------------------------------------------------------------------------
    def _prepare_workdir(self, overwrite: bool) -> None:
        w = self.workdir
        if w.exists() and any(w.iterdir()):
            if not (w / MARKER).is_file():
                raise FileExistsError(
                    f"{w} exists and is not a duet-plugin demo folder; choose another --workdir (nothing was changed)."
                )
            if not overwrite:
                raise FileExistsError(
                    f"{w} holds an earlier demo run; pass --overwrite to replace it, or choose another --workdir."
                )
            shutil.rmtree(w)
        w.mkdir(parents=True, exist_ok=True)
        (w / MARKER).write_text("made by `duet-plugin demo`; --overwrite may delete this folder\n")

    def say(self, text: str) -> None:
        with self._lock:
            print(text, file=self.out, flush=True)

    # -- running OU --------------------------------------------------------------------------------------------
    def ou(self, name: str, script: str, args: list[str], cwd: Path | None = None, threads: int = 1) -> None:
        """Run OU's ``src/<script>.py`` with ``args`` on ``threads`` CPU threads; show its progress; keep its log."""
        log_path = self.logs / f"{name}.log"
        cmd = [sys.executable, str(self.ou_root / "src" / f"{script}.py"), *args]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            # One datasets cache per data folder: the teacher view reuses the plain view's config names.
            "HF_DATASETS_CACHE": str((cwd or self.workdir) / ".hf_datasets_cache"),
        }
        self.say(f"      {name}: started (t={time.time() - self._t0:.0f}s)")
        start = time.time()
        with log_path.open("w") as log:
            log.write(" ".join(cmd) + "\n\n")
            proc = subprocess.Popen(
                cmd,
                cwd=cwd or self.workdir,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
            assert proc.stdout is not None
            buffer, shown = "", 0
            while chunk := proc.stdout.read(256):
                log.write(chunk)
                buffer = (buffer + chunk)[-400:]
                matches = _PROGRESS.findall(buffer)
                if not matches:
                    continue
                percent, done, total = (int(x) for x in matches[-1])
                if percent >= shown + 25:  # a line per quarter of each progress bar
                    shown = percent - percent % 25
                    self.say(f"      {name}: {done}/{total} ({time.time() - start:.0f}s)")
            rc = proc.wait()
        if rc != 0:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
            raise DemoStepFailed(f"{name} failed (exit {rc}); full log: {log_path}\n{tail}")
        n_done = next(self._done)
        self.say(
            f"      {name}: done in {time.time() - start:.0f}s [{n_done}/{self._n_jobs} OU runs] "
            f"(t={time.time() - self._t0:.0f}s)"
        )

    # -- the pipeline ------------------------------------------------------------------------------------------
    def run(self) -> Path:
        """Run every step (two OU commands at a time, in dependency order) and write the table."""
        s = self.settings
        self.say("Writing the fictitious-author dataset, the demo fine-tuning sets and a tiny Llama")
        data = self.build_data()
        init = self.workdir / "models" / "init"
        self.say(f"      forget split {s.forget_split}: {', '.join(data.forget_authors)}")
        self.say(f"      teacher prefix: {data.prefix}")
        evals = self.workdir / "saves" / "eval"
        self.say(f"Running {self._n_jobs} OU commands (fine-tune x2, unlearn x2, TOFU eval x5), two at a time")
        with ThreadPoolExecutor(max_workers=2) as pool:
            # Submitted in dependency order: a job only waits for jobs submitted before it, so two workers suffice.
            # The retain-only reference sees its facts as often as the full model sees all facts (same epochs over
            # facts); it needs no instruction rows, so it is much shorter, and the full model gets two threads.
            configs = data.dataset.configs
            retain_steps = max(1, round(s.finetune_steps * len(configs["demo_retain"]) / len(configs["demo_full"])))
            full = pool.submit(self.finetune, "demo_full", init, s.finetune_steps, 2)
            retain = pool.submit(self.finetune, "demo_retain", init, retain_steps)
            retain_logs = pool.submit(
                lambda: self.evaluate("eval_retain", retain.result(), evals / "demo_retain", None)
            )
            duet = pool.submit(lambda: self.unlearn("duet", full.result(), data))
            full_eval = pool.submit(
                lambda: self.evaluate("eval_full", full.result(), evals / "demo_full", retain_logs.result())
            )
            teacher_eval = pool.submit(
                lambda: self.evaluate(
                    "eval_teacher",
                    full.result(),
                    evals / "demo_teacher",
                    retain_logs.result(),
                    cwd=self.workdir / "teacher_view",
                )
            )
            graddiff = pool.submit(lambda: self.unlearn("graddiff", full.result(), data))
            duet_eval = pool.submit(
                lambda: self.evaluate("eval_duet", duet.result(), duet.result() / "evals", retain_logs.result())
            )
            graddiff_eval = pool.submit(
                lambda: self.evaluate(
                    "eval_graddiff", graddiff.result(), graddiff.result() / "evals", retain_logs.result()
                )
            )
            results = [
                ("fine-tuned (no prefix)", full_eval),
                ("teacher: fine-tuned + prefix", teacher_eval),
                ("DUET student (no prefix)", duet_eval),
                ("GradDiff", graddiff_eval),
                ("retain-only reference", retain_logs),
            ]
            rows = [self.row(label, future.result()) for label, future in results]
        table = render_table(rows, s.forget_split)
        wall = time.time() - self._t0
        self.say("")
        self.say(table)
        path = self.workdir / "demo_results.md"
        path.write_text(
            f"# duet-plugin demo results\n\nTeacher prefix: {data.prefix}\n\n{table}\n\nTotal wall time: {wall:.0f}s\n"
        )
        self.say(f"\nTotal wall time: {wall:.0f}s. Table written to {path}")
        return path

    def build_data(self) -> DemoData:
        s = self.settings
        dataset = build_dataset(n_authors=s.n_authors, qa_per_author=s.qa_per_author, seed=s.seed)
        data = build_demo_data(
            dataset,
            s.forget_split,
            n_instruction_rows=s.n_instruction_rows,
            fact_repeats=s.fact_repeats,
            paraphrase_repeats=s.paraphrase_repeats,
            seed=s.seed,
        )
        write_hub_layout(data.dataset, self.workdir)
        write_hub_layout(data.teacher_view, self.workdir / "teacher_view")
        texts = [f"{r['question']} {r['answer']}" for rows in data.dataset.configs.values() for r in rows]
        tokenizer = build_tokenizer(texts, vocab_size=s.vocab_size, whole_words=data.name_tokens)
        model = build_tiny_llama(
            tokenizer, hidden_size=s.hidden_size, num_layers=s.num_layers, num_heads=4, max_positions=1024, seed=s.seed
        )
        save_model(model, tokenizer, self.workdir / "models" / "init")
        return data

    def _common(self) -> list[str]:
        return [
            "model.template_args.system_prompt=null",
            f"forget_split={self.settings.forget_split}",
            f"holdout_split={self.holdout_split}",
        ]

    def finetune(self, config: str, init: Path, steps: int, threads: int = 1) -> Path:
        s = self.settings
        self.ou(
            f"finetune_{config}",
            "train",
            [
                "experiment=finetune/tofu/default",
                f"task_name={config}",
                *train_overrides(init),
                *self._common(),
                f"data.train.TOFU_QA_full.args.hf_args.name={config}",
                f"++trainer.args.max_steps={steps}",
                f"trainer.args.learning_rate={s.finetune_lr}",
                f"trainer.args.per_device_train_batch_size={s.finetune_batch_size}",
                "trainer.args.gradient_accumulation_steps=1",
                "+trainer.args.lr_scheduler_type=cosine",
                "+trainer.args.warmup_ratio=0.05",
                "trainer.args.logging_steps=50",
                f"trainer.args.seed={s.seed}",
            ],
            threads=threads,
        )
        return self.workdir / "saves" / "finetune" / config

    def evaluate(
        self,
        name: str,
        model: Path,
        output_dir: Path,
        retain_logs: Path | None,
        cwd: Path | None = None,
        experiment: str = "eval/tofu/default",
        extra: Sequence[str] = (),
    ) -> Path:
        n = self.settings.eval_max_new_tokens
        rouge = ["eval.tofu.metrics.forget_Q_A_ROUGE"] + [
            f"eval.tofu.metrics.model_utility.pre_compute.{k}_Q_A_ROUGE" for k in ("retain", "ra", "wf")
        ]
        args = [
            f"experiment={experiment}",
            f"task_name={name}",
            *eval_overrides(model),
            *self._common(),
            f"paths.output_dir={output_dir}",
            "eval.tofu.overwrite=true",  # OU would otherwise reuse the metrics of an earlier run in that folder
            *(f"{m}.generation_args.max_new_tokens={n}" for m in rouge),
            *extra,
        ]
        if retain_logs is not None:
            args.append(f"retain_logs_path={retain_logs}")
        self.ou(name, "eval", args, cwd=cwd)
        return output_dir / "TOFU_EVAL.json"

    def unlearn(self, method: str, model: Path, data: DemoData | None = None) -> Path:
        """Unlearn the forget split from ``model`` with DUET (needs the demo ``data``) or an OU baseline."""
        s = self.settings
        common = [
            f"task_name=demo_{method}",
            *train_overrides(model),
            *self._common(),
            f"retain_split={self.retain_split}",
            f"trainer.args.num_train_epochs={s.unlearn_epochs}",
            f"trainer.args.learning_rate={s.unlearn_lr}",
            f"trainer.args.per_device_train_batch_size={s.unlearn_batch_size}",
            "trainer.args.gradient_accumulation_steps=1",
            f"trainer.args.seed={s.seed}",
        ]
        if method == "duet":
            if data is None:
                raise ValueError("DUET's demo run needs the demo data (its forget authors name the prefix).")
            concepts = ",".join(json.dumps(a) for a in data.forget_authors)
            args = [
                "experiment=unlearn/tofu/duet",
                *common,
                "trainer.method_args.prefix.name=never_heard_of",
                "trainer.method_args.prefix.placement=user",
                f"trainer.method_args.prefix.concepts=[{concepts}]",
                *s.extra_duet_overrides,
            ]
        elif method in OU_TRAINERS:
            args = ["experiment=unlearn/tofu/default", f"trainer={OU_TRAINERS[method]}", *common]
        else:
            raise ValueError(f"Unknown demo unlearning method {method!r}; use duet or one of {sorted(OU_TRAINERS)}.")
        self.ou(f"unlearn_{method}", "train", ["--config-name=unlearn.yaml", *args])
        return self.workdir / "saves" / "unlearn" / f"demo_{method}"

    @staticmethod
    def row(label: str, eval_path: Path) -> ModelRow:
        summary = json.loads((eval_path.parent / "TOFU_SUMMARY.json").read_text())
        details = json.loads(eval_path.read_text())
        return ModelRow(label, summary, details)


def refusal_rate(details: dict[str, Any]) -> float | None:
    """Share of forget-question generations (OU's forget_Q_A_ROUGE) that are the refusal."""
    by_index = (details.get("forget_Q_A_ROUGE") or {}).get("value_by_index") or {}
    gens = [v.get("generation", "") for v in by_index.values()]
    return sum(is_refusal(g, phrases=(REFUSAL[:20],), window=None) for g in gens) / len(gens) if gens else None


COLUMNS = (
    ("forget Prob ↓", lambda r: r.summary.get("forget_Q_A_Prob")),
    ("forget ROUGE ↓", lambda r: r.summary.get("forget_Q_A_ROUGE")),
    ("forget refusals", lambda r: refusal_rate(r.details)),
    ("forget_quality ↑", lambda r: r.summary.get("forget_quality")),
    ("retain Prob ↑", lambda r: (r.details.get("retain_Q_A_Prob") or {}).get("agg_value")),
    ("retain ROUGE ↑", lambda r: (r.details.get("retain_Q_A_ROUGE") or {}).get("agg_value")),
    ("model_utility ↑", lambda r: r.summary.get("model_utility")),
)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.3f}"


def render_table(rows: list[ModelRow], forget_split: str) -> str:
    """A markdown table of OU's TOFU metrics (and the refusal rate on forget questions) per model."""
    head = f"| model ({forget_split}) | " + " | ".join(c for c, _ in COLUMNS) + " |"
    sep = "|---" * (len(COLUMNS) + 1) + "|"
    body = [f"| {r.label} | " + " | ".join(_fmt(f(r)) for _, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])
