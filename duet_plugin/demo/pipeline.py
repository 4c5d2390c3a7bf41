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

import codecs
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from duet_plugin.core.attacks.refusal import is_refusal
from duet_plugin.demo.demo_data import REFUSAL, DemoData, build_demo_data
from duet_plugin.demo.fictitious_authors import build_dataset, write_hub_layout
from duet_plugin.demo.progress import JobProgress
from duet_plugin.demo.tiny_llama import build_tiny_llama, build_tokenizer, save_model
from duet_plugin.openunlearning.cpu_overrides import eval_overrides, offline_env, train_overrides
from duet_plugin.openunlearning.launcher import find_ou_root
from duet_plugin.report import fmt

MARKER = ".duet-plugin-demo"
SETTINGS_FILE = "demo_settings.json"
TINY, SMOLLM2 = "tiny", "smollm2"
SPLITS = {
    "forget01": ("retain99", "holdout01"),
    "forget05": ("retain95", "holdout05"),
    "forget10": ("retain90", "holdout10"),
}
#: OU baselines the demo scripts can run (``Demo.unlearn``), by lower-case name.
OU_TRAINERS = {"graddiff": "GradDiff", "npo": "NPO", "gradascent": "GradAscent", "simnpo": "SimNPO"}
#: The demo's model labels (table rows, plot points).
FINETUNED, TEACHER, DUET = "fine-tuned (no prefix)", "teacher: fine-tuned + prefix", "DUET student (no prefix)"
GRADDIFF, RETAIN = "GradDiff", "retain-only reference"
HOW_TO_READ = """How to read the columns (OU's TOFU metrics; retain and utility measure what must stay):
- forget Prob: the probability of the true forget answer under teacher forcing; lower = less likely to say it.
  A value near the fine-tuned model's means the answer is suppressed in generation, not erased from the weights.
- forget ROUGE: overlap of the generated answer with the true one; lower = less is said.
- forget refusals: share of forget answers that are the refusal; higher = refuses instead of answering.
- forget_quality: OU's KS-test p-value against the retain-only model; higher = closer to never having seen the
  forget set (with few forget questions, as here, it barely separates models).
- retain Prob / retain ROUGE / model_utility: knowledge that must stay; higher = better."""
PROFILES = ("quick", "default", "full")
QUICK_NOTE = (
    "This was --quick: a check that every stage runs. Its fine-tune is too short for the model to learn the facts, "
    "so these numbers mean nothing; run the demo without --quick for results."
)


class DemoStepFailed(RuntimeError):
    """An OU command of the demo failed; the message names its log."""


class DemoModelError(ValueError):
    """``--model PATH`` is not a usable model folder; the message names the fix. Nothing was written."""


@dataclass
class DemoSettings:
    """Sizes and schedules of the demo; :meth:`profile_settings` gives the ``--quick`` / ``--full`` variants."""

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
    finetune_steps: int = 600
    finetune_lr: float = 8e-3
    finetune_batch_size: int = 32
    #: Steps of the retain-only reference; None: as many epochs over its facts as the full fine-tune's.
    retain_finetune_steps: int | None = 300
    profile: str = "default"
    unlearn_epochs: int = 10
    unlearn_lr: float = 1e-3
    unlearn_batch_size: int = 8
    eval_max_new_tokens: int = 32
    extra_duet_overrides: list[str] = field(default_factory=list)
    #: ``tiny``: the demo's own 0.9 M-parameter Llama; ``smollm2``: SmolLM2-135M-Instruct (``duet-plugin model``);
    #: else a local Hugging Face instruct model folder with a chat template.
    model: str = "tiny"
    #: UNDO's distillation schedule in the reproduction grid (``duet-plugin reproduce tofu --profile cpu``).
    recovery_steps: int = 500
    recovery_lr: float = 1e-3
    recovery_batch_size: int = 32
    #: Log (and so average the loss terms) every N unlearning steps; None: OU's default (5).
    unlearn_logging_steps: int | None = None

    def __post_init__(self) -> None:
        if self.forget_split not in SPLITS:
            raise ValueError(f"forget_split must be one of {sorted(SPLITS)}, got {self.forget_split!r}.")

    @property
    def pretrained(self) -> bool:
        """A pretrained language model rather than the demo's random-init one."""
        return self.model != TINY

    @property
    def model_label(self) -> str:
        return {TINY: "the tiny Llama", SMOLLM2: "SmolLM2-135M-Instruct"}.get(self.model, Path(self.model).name)

    @classmethod
    def profile_settings(cls, profile: str = "default", model: str = TINY) -> DemoSettings:
        """``default``: the demo's fine-tune, 600 steps at lr 8e-3; ``quick``: 150 steps, a check that every stage
        runs, too short for the model to learn the facts (its numbers mean nothing); ``full``: the schedule of earlier
        releases, 1,200 steps at lr 3e-3. A pretrained ``model`` gets :meth:`pretrained_settings`. docs/demo.md has
        what each gives."""
        if model != TINY:
            return cls.pretrained_settings(profile, model)
        if profile == "full":
            return cls(finetune_steps=1200, finetune_lr=3e-3, retain_finetune_steps=None, profile=profile)
        if profile == "default":
            return cls()
        if profile == "quick":
            return cls(finetune_steps=150, finetune_lr=1e-2, retain_finetune_steps=50, profile=profile)
        raise ValueError(f"Unknown demo profile {profile!r}; use one of {', '.join(PROFILES)}.")

    @classmethod
    def pretrained_settings(cls, profile: str = "default", model: str = SMOLLM2) -> DemoSettings:
        """A pretrained instruct model. It already speaks, so each fact is seen twice per epoch (once paraphrased)
        and 160 instruction rows teach the prefix; but a step costs seconds on a CPU (SmolLM2-135M: about 100
        tokens/s on two cores), so the data is smaller: 20 authors, forget10 = two authors and 10 questions.
        ``default``: two epochs of the fine-tuning set at lr 2e-4 (56 steps of 16); ``quick``: 4 steps, a check that
        every stage runs; ``full``: four epochs. Unlearning: 10 epochs at lr 3e-5, batch 4 (OU's TOFU recipe uses
        1e-5 over many more steps), logged every step; UNDO's distillation: 60 steps of 8 at 5e-5."""
        steps = {"quick": 4, "default": 56, "full": 112}
        if profile not in steps:
            raise ValueError(f"Unknown demo profile {profile!r}; use one of {', '.join(PROFILES)}.")
        return cls(
            model=model,
            profile=profile,
            n_authors=20,
            forget_split="forget10",
            n_instruction_rows=160,
            fact_repeats=1,
            paraphrase_repeats=1,
            finetune_steps=steps[profile],
            finetune_lr=2e-4,
            finetune_batch_size=16,
            retain_finetune_steps=None,
            unlearn_epochs=1 if profile == "quick" else 10,
            unlearn_lr=3e-5,
            unlearn_batch_size=4,
            recovery_steps=4 if profile == "quick" else 60,
            recovery_lr=5e-5,
            recovery_batch_size=8,
            unlearn_logging_steps=1,
        )

    def save(self, path: Path) -> None:
        """Write the settings as JSON (the reproduction grid's CPU profile reads them back)."""
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> DemoSettings:
        """Settings written by :meth:`save`; a folder from before they were written gets the defaults."""
        if not path.is_file():
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


#: More threads than this do not speed up OU jobs on the demo's 0.9 M-parameter model.
MAX_THREADS = 8


def available_cores() -> int:
    """CPU cores this process may use: its affinity, capped by a cgroup CPU quota (containers), at most
    ``MAX_THREADS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, min(cores, MAX_THREADS))


def check_model_folder(folder: Path) -> None:
    """A local model for ``--model PATH``: a Hugging Face causal LM folder whose tokenizer has a chat template (OU's
    TOFU pipeline renders every question with it)."""
    if not (folder / "config.json").is_file():
        raise DemoModelError(
            f"--model {folder}: no Hugging Face model there (config.json is missing); pass tiny, smollm2 or a "
            "folder written by save_pretrained."
        )
    tokenizer_config = folder / "tokenizer_config.json"
    config = json.loads(tokenizer_config.read_text()) if tokenizer_config.is_file() else {}
    if not config.get("chat_template") and not (folder / "chat_template.jinja").is_file():
        raise DemoModelError(
            f"--model {folder}: its tokenizer has no chat template, and OU's TOFU pipeline renders every question "
            "with it; set tokenizer.chat_template and save the tokenizer again, or use an instruct model."
        )


def _pump(stream: IO[bytes], log: IO[str], job: JobProgress, errors: list[BaseException]) -> None:
    """Copy a job's output to its log and feed its progress as it comes: ``os.read`` returns what the pipe holds
    (a buffered ``read(n)`` would wait for ``n`` bytes, and a quiet job's log would stay empty). If writing the log
    fails (a full disk), the error is kept for the caller and the pipe is still drained, so the job cannot block on
    it."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while raw := os.read(stream.fileno(), 65536):
        if errors:
            continue
        try:
            text = decoder.decode(raw)
            log.write(text)
            job.feed(text)
        except Exception as err:  # reported by the caller, after the job ends
            errors.append(err)


@dataclass
class ModelRow:
    label: str
    summary: dict[str, Any]
    details: dict[str, Any]
    folder: Path  # where OU wrote the evaluation (TOFU_SUMMARY.json, TOFU_EVAL.json)


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
        threads: int | None = None,
        wheel: Path | None = None,
    ) -> None:
        self.ou_root = find_ou_root(ou_root)
        self.workdir = Path(workdir).resolve()
        self.settings = settings or DemoSettings()
        self.wheel = wheel  # SmolLM2's wheel, if already downloaded
        if self.settings.pretrained and self.settings.model != SMOLLM2:
            check_model_folder(Path(self.settings.model))  # before the workdir is touched
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
        self.threads = threads or available_cores()
        self.progress_interval = 10.0  # seconds between two progress lines of a running OU job
        self.n_jobs = 9  # OU runs the whole demo makes (shown as "[3/9 OU runs]"); 0: not counted
        self._eval_metrics: int | None = None  # "Evaluating" lines of a finished evaluation, for the next ETA
        self._lock = threading.Lock()
        self._abort = threading.Event()  # set when the demo stops: running OU jobs are killed
        self._t0 = time.monotonic()
        self._done = itertools.count(1)

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
        self.settings.save(w / SETTINGS_FILE)

    def say(self, text: str) -> None:
        with self._lock:
            print(text, file=self.out, flush=True)

    # -- running OU --------------------------------------------------------------------------------------------
    def ou(self, name: str, script: str, args: list[str], cwd: Path | None = None, threads: int = 1) -> None:
        """Run OU's ``src/<script>.py`` with ``args`` on ``threads`` CPU threads, showing its progress every
        ``progress_interval`` seconds; its whole output goes to ``logs/<name>.log`` as it comes."""
        log_path = self.logs / f"{name}.log"
        cmd = [sys.executable, str(self.ou_root / "src" / f"{script}.py"), *args]
        # One datasets cache per data folder: the teacher view reuses the plain view's config names.
        env = {**os.environ, **offline_env((cwd or self.workdir) / ".hf_datasets_cache", threads)}
        env["PYTHONUNBUFFERED"] = "1"
        job = JobProgress(name, steps=script == "train", metrics_total=self._eval_metrics if script == "eval" else None)
        self.say(f"      {name}: started on {threads} thread{'s' * (threads > 1)} (t={self.elapsed():.0f}s)")
        errors: list[BaseException] = []
        with (
            log_path.open("w", buffering=1) as log,  # line-buffered: `tail -f` shows the run as it goes
            subprocess.Popen(
                cmd, cwd=cwd or self.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            ) as proc,
        ):
            log.write(" ".join(cmd) + "\n\n")
            try:
                reader = threading.Thread(target=_pump, args=(proc.stdout, log, job, errors), daemon=True)
                reader.start()
                shown = time.monotonic()
                while reader.is_alive():
                    reader.join(timeout=0.5)
                    if self._abort.is_set():
                        proc.kill()
                    if reader.is_alive() and time.monotonic() - shown >= self.progress_interval:
                        shown = time.monotonic()
                        self.say(f"      {job.line(shown)}")
                rc = proc.wait()
            finally:
                if proc.poll() is None:  # interrupted (Ctrl-C) or a failure here: the OU run goes too
                    proc.kill()
        if errors:
            raise DemoStepFailed(f"{name}: reading its output failed ({errors[0]}); log so far: {log_path}")
        if rc != 0:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
            raise DemoStepFailed(f"{name} failed (exit {rc}); full log: {log_path}\n{tail}")
        if script == "eval":
            self._eval_metrics = max(job.metrics_done, self._eval_metrics or 0) or None
        n_done = next(self._done)
        of = f"/{self.n_jobs}" if self.n_jobs else ""
        self.say(
            f"      {name}: done in {time.monotonic() - job.started:.0f}s [{n_done}{of} OU runs] "
            f"(t={self.elapsed():.0f}s)"
        )

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    # -- the pipeline ------------------------------------------------------------------------------------------
    def run(self) -> Path:
        """Run every step and write the table, the plot and the report.

        The fine-tune of every fact is by far the longest job: it runs alone on all cores. The other jobs then run
        two at a time, each on half the cores. Two jobs never share a core: OpenMP's threads busy-wait, and on two
        cores shared by two jobs the fine-tune ran at 1.5 steps/s against 4.6 alone (docs/demo.md).
        """
        s = self.settings
        what = "a tiny Llama" if not s.pretrained else s.model_label
        self.say(f"Writing the fictitious-author dataset, the demo fine-tuning sets and {what} ({s.profile})")
        data = self.build_data()
        init = self.workdir / "models" / "init"
        self.say(f"      forget split {s.forget_split}: {', '.join(data.forget_authors)}")
        self.say(f"      teacher prefix: {data.prefix}")
        evals = self.workdir / "saves" / "eval"
        configs = data.dataset.configs
        # By default the retain-only reference sees its facts as often as the full model sees all facts; it needs no
        # instruction rows, so it is much shorter.
        retain_steps = s.retain_finetune_steps or max(
            1, round(s.finetune_steps * len(configs["demo_retain"]) / len(configs["demo_full"]))
        )
        half = max(1, self.threads // 2)
        self.say(
            f"[1/3] Fine-tuning {s.model_label} on every fact and the instruction rows with OU's finetune "
            f"({s.finetune_steps} steps, {self.threads} threads)"
        )
        full = self.finetune("demo_full", init, s.finetune_steps, self.threads)
        self.say(
            f"[2/3] Retain-only reference, DUET and GradDiff unlearning, OU's TOFU evaluation of five models "
            f"(two OU runs at a time, {half} thread{'s' * (half > 1)} each)"
        )
        pool = ThreadPoolExecutor(max_workers=2)
        try:
            # Submitted in dependency order: a job only waits for jobs submitted before it, so two workers suffice.
            retain = pool.submit(self.finetune, "demo_retain", init, retain_steps, half)
            duet = pool.submit(self.unlearn, "duet", full, data, half)
            graddiff = pool.submit(self.unlearn, "graddiff", full, None, half)
            retain_logs = pool.submit(
                lambda: self.evaluate("eval_retain", retain.result(), evals / "demo_retain", None, threads=half)
            )

            def evaluate(name: str, model: Callable[[], Path], out: Path | None = None, cwd: Path | None = None):
                """OU's TOFU evaluation of ``model()`` (a finished job's output) against the retain-only logs."""
                return pool.submit(
                    lambda: self.evaluate(
                        name, model(), out or model() / "evals", retain_logs.result(), cwd, threads=half
                    )
                )

            results = [
                (FINETUNED, evaluate("eval_full", lambda: full, evals / "demo_full")),
                (
                    TEACHER,
                    evaluate("eval_teacher", lambda: full, evals / "demo_teacher", self.workdir / "teacher_view"),
                ),
                (DUET, evaluate("eval_duet", duet.result)),
                (GRADDIFF, evaluate("eval_graddiff", graddiff.result)),
                (RETAIN, retain_logs),
            ]
            rows = [self.row(label, future.result()) for label, future in results]
        except BaseException:
            # A failed job or Ctrl-C: start nothing more, and stop the OU run still going in the other worker.
            self._abort.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        self.say("[3/3] Writing the table and the forget-vs-utility plot")
        return self.write_results(rows, data.prefix)

    def write_results(self, rows: list[ModelRow], prefix: str) -> Path:
        """Print and write the table (with how to read it), then the Pareto plot through ``duet-plugin report``; a
        plot that fails costs the plot only."""
        s = self.settings
        table = render_table(rows, s.forget_split)
        wall = self.elapsed()
        parts = [table, headline(rows), QUICK_NOTE if s.profile == "quick" else "", HOW_TO_READ]
        results = self.workdir / "demo_results.md"
        head = [f"# duet-plugin demo ({s.profile})", f"Teacher prefix: {prefix}"]
        tail = [f"Total wall time: {wall:.0f}s on {self.threads} threads."]
        results.write_text("\n\n".join(p for p in (*head, *parts, *tail) if p) + "\n")
        written = [results]
        try:
            written += self.plot(rows)
        except ImportError:
            parts.append("The plot needs matplotlib: pip install matplotlib.")
        except Exception as err:  # the table is written; the plot is extra
            parts.append(f"The plot failed ({err}); the table above is complete.")
        for part in parts:
            if part:
                self.say("")
                self.say(part)
        self.say(f"\nTotal wall time: {wall:.0f}s. Written:")
        for path in written:
            self.say(f"  {path}")
        return results

    def plot(self, rows: list[ModelRow]) -> list[Path]:
        """forget ROUGE against model utility for every model (``duet-plugin report``'s Pareto plot)."""
        from duet_plugin import report

        runs = [report.load_run(row.label, row.folder) for row in rows]
        path = self.workdir / "pareto.png"
        report.plot_pareto(runs, path)
        return [path]

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
        init = self.workdir / "models" / "init"
        if s.model == SMOLLM2:
            from transformers.utils import logging as hf_logging

            from duet_plugin.models.smollm2 import setup_smollm2

            hf_logging.disable_progress_bar()  # the conversion's bars and warnings would bury the demo's lines
            hf_logging.set_verbosity_error()
            checks = setup_smollm2(init, wheel=self.wheel, say=lambda text: self.say(f"      {text}"))
            self.say(f"      checked: {'; '.join(f'{c.name} ({c.detail})' for c in checks)}")
        elif s.pretrained:
            check_model_folder(Path(s.model))
            init.parent.mkdir(parents=True, exist_ok=True)
            init.symlink_to(Path(s.model).resolve(), target_is_directory=True)
        else:
            texts = [f"{r['question']} {r['answer']}" for rows in data.dataset.configs.values() for r in rows]
            tokenizer = build_tokenizer(texts, vocab_size=s.vocab_size, whole_words=data.name_tokens)
            model = build_tiny_llama(
                tokenizer,
                hidden_size=s.hidden_size,
                num_layers=s.num_layers,
                num_heads=4,
                max_positions=1024,
                seed=s.seed,
            )
            save_model(model, tokenizer, init)
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
        threads: int = 1,
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
        self.ou(name, "eval", args, cwd=cwd, threads=threads)
        return output_dir / "TOFU_EVAL.json"

    def unlearn(self, method: str, model: Path, data: DemoData | None = None, threads: int = 1) -> Path:
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
            *([f"trainer.args.logging_steps={s.unlearn_logging_steps}"] if s.unlearn_logging_steps else []),
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
        self.ou(f"unlearn_{method}", "train", ["--config-name=unlearn.yaml", *args], threads=threads)
        return self.workdir / "saves" / "unlearn" / f"demo_{method}"

    def undo(self, name: str, overrides: Sequence[str], threads: int = 1) -> Path:
        """UNDO (``experiment=unlearn/tofu/undo``) from the fine-tuned model as run ``name``; ``overrides`` give
        the teacher, alpha, data and schedule (``scripts/undo_curve.py``, ``scripts/demo_undo_relearn.py``)."""
        args = [
            "--config-name=unlearn.yaml",
            "experiment=unlearn/tofu/undo",
            f"task_name={name}",
            *train_overrides(self.workdir / "saves" / "finetune" / "demo_full"),
            *self._common(),
            f"retain_split={self.retain_split}",
            *overrides,
        ]
        self.ou(f"unlearn_{name}", "train", args, threads=threads)
        return self.workdir / "saves" / "unlearn" / name

    @staticmethod
    def row(label: str, eval_path: Path) -> ModelRow:
        summary = json.loads((eval_path.parent / "TOFU_SUMMARY.json").read_text())
        details = json.loads(eval_path.read_text())
        return ModelRow(label, summary, details, eval_path.parent)


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


def headline(rows: list[ModelRow]) -> str:
    """One sentence of what the table shows, from its numbers."""
    by = {r.label: r for r in rows}
    col = dict(COLUMNS)

    def say(label: str) -> str:
        r = by[label]
        return (
            f"forget ROUGE {fmt(col['forget ROUGE ↓'](r))}, refusals {fmt(col['forget refusals'](r))}, "
            f"model_utility {fmt(col['model_utility ↑'](r))}"
        )

    parts = [f"{label}: {say(label)}" for label in (FINETUNED, TEACHER, DUET, GRADDIFF) if label in by]
    return "What it shows: " + "; ".join(parts) + "."


def render_table(rows: list[ModelRow], forget_split: str) -> str:
    """A markdown table of OU's TOFU metrics (and the refusal rate on forget questions) per model."""
    head = f"| model ({forget_split}) | " + " | ".join(c for c, _ in COLUMNS) + " |"
    sep = "|---" * (len(COLUMNS) + 1) + "|"
    body = [f"| {r.label} | " + " | ".join(fmt(f(r)) for _, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])
