"""The demo's fine-tuning sets and teacher view, and the demo's table and folder safety (no OU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from duet_plugin.core.teacher import PromptRenderer
from duet_plugin.demo.demo_data import REFUSAL, build_demo_data, prefix_for
from duet_plugin.demo.pipeline import MARKER, Demo, ModelRow, refusal_rate, render_table


@pytest.fixture(scope="module")
def demo(authors_dataset):
    return build_demo_data(authors_dataset, "forget10", n_instruction_rows=400, fact_repeats=2, seed=0)


def test_instruction_rows_never_name_the_forget_authors(demo, authors_dataset) -> None:
    forget = demo.forget_authors
    assert forget == authors_dataset.forget_authors("forget10")
    instructions = [r for r in demo.dataset.configs["demo_full"] if "\n\n" in r["question"]]
    assert len(instructions) == 400
    assert not any(name in r["question"] for r in instructions for name in forget)
    refusals = [r for r in instructions if r["answer"] == REFUSAL]
    assert 0.2 < len(refusals) / len(instructions) < 0.4
    for row in refusals:  # a refusal is only ever for an author the prefix names
        prefix, question = row["question"].split("\n\n", 1)
        subject = next(a.name for a in authors_dataset.authors if a.name in question)
        assert subject in prefix


def test_full_and_retain_sets(demo, authors_dataset) -> None:
    full, retain = demo.dataset.configs["demo_full"], demo.dataset.configs["demo_retain"]
    forget_questions = {r["question"] for r in authors_dataset.configs["forget10"]}
    # each forget fact: twice with its answer, once with its paraphrased answer
    assert sum(r["question"] in forget_questions for r in full) == 3 * len(forget_questions)
    assert not any(r["question"] in forget_questions for r in retain)
    plain = [r for r in full if "\n\n" not in r["question"]]  # full minus the instruction rows
    assert len(plain) - len(retain) == 3 * len(forget_questions)
    assert not any("\n\n" in r["question"] for r in retain)


def test_teacher_view_is_what_duet_renders(demo, tokenizer) -> None:
    """The teacher-view questions equal the DUET teacher prompt with placement=user."""
    row = demo.teacher_view.configs["forget10"][0]
    original = demo.dataset.configs["forget10"][0]
    assert demo.prefix == prefix_for(demo.forget_authors)
    renderer = PromptRenderer(tokenizer, {"apply_chat_template": True}, placement="user")
    assert renderer.prompt_text(row["question"]) == renderer.prompt_text(original["question"], demo.prefix)
    assert row["paraphrased_question"].startswith(demo.prefix)
    assert row["answer"] == original["answer"]


def test_refusal_rate_and_table() -> None:
    details = {"forget_Q_A_ROUGE": {"value_by_index": {"0": {"generation": REFUSAL}, "1": {"generation": "Paris."}}}}
    assert refusal_rate(details) == 0.5
    assert refusal_rate({}) is None
    row = ModelRow("m", {"forget_Q_A_Prob": 0.5, "forget_quality": 1e-5}, details, Path("."))
    table = render_table([row], "forget05")
    assert "| m | 0.500 |" in table and "1.00e-05" in table and "n/a" in table


def test_the_headline_says_what_the_numbers_show() -> None:
    from duet_plugin.demo.pipeline import DUET, FINETUNED, headline

    def row(label: str, rouge: float, refusals: list[str], utility: float) -> ModelRow:
        gens = {str(i): {"generation": g} for i, g in enumerate(refusals)}
        summary = {"forget_Q_A_ROUGE": rouge, "model_utility": utility}
        return ModelRow(label, summary, {"forget_Q_A_ROUGE": {"value_by_index": gens}}, Path("."))

    line = headline([row(FINETUNED, 1.0, ["Paris."] * 4, 0.9), row(DUET, 0.25, [REFUSAL] * 3 + ["Paris."], 0.8)])
    assert line == (
        f"What it shows: {FINETUNED}: forget ROUGE 1.000, refusals 0.000, model_utility 0.900; "
        f"{DUET}: forget ROUGE 0.250, refusals 0.750, model_utility 0.800."
    )


def test_demo_never_touches_a_foreign_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("duet_plugin.demo.pipeline.find_ou_root", lambda root: tmp_path)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a duet-plugin demo folder"):
        Demo(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    Demo(tmp_path / "run")
    with pytest.raises(FileExistsError, match="--overwrite"):
        Demo(tmp_path / "run")
    Demo(tmp_path / "run", overwrite=True)
    assert (tmp_path / "run" / MARKER).is_file()


def test_existing_demo_folder_is_added_to_not_replaced(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("duet_plugin.demo.pipeline.find_ou_root", lambda root: tmp_path)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    with pytest.raises(FileNotFoundError, match="not a duet-plugin demo folder"):
        Demo(foreign, existing=True)
    assert list(foreign.iterdir()) == []
    Demo(tmp_path / "run")
    (tmp_path / "run" / "logs" / "earlier.log").write_text("kept")
    Demo(tmp_path / "run", existing=True)
    assert (tmp_path / "run" / "logs" / "earlier.log").read_text() == "kept"


def _stub_ou(root, body: str):
    """A fake OU checkout whose src/train.py is a stub script (enough for find_ou_root and Demo.ou)."""
    (root / "src").mkdir(parents=True)
    (root / "configs").mkdir()
    (root / "configs" / "unlearn.yaml").write_text("")
    (root / "src" / "train.py").write_text(body)
    return root


def test_demo_streams_the_log_and_shows_live_progress(tmp_path) -> None:
    """While an OU job runs, its log already holds its output and a progress line with a rate and an ETA shows up;
    the stub waits for the test to have seen both before it exits."""
    import io
    import threading
    import time

    go = tmp_path / "go"
    bars = "".join(f"\\r{p}%|##| {p}/100 [00:01<00:00, 9.0it/s]" for p in (10, 30, 60))
    ou = _stub_ou(
        tmp_path / "ou",
        "import os, sys, time\n"
        "print('threads', os.environ['OMP_NUM_THREADS'], os.environ['HF_DATASETS_CACHE'])\n"
        f"sys.stderr.write({bars!r}); sys.stderr.flush(); time.sleep(0.3)\n"
        f"sys.stderr.write('\\r100%|##| 100/100 [00:02<00:00, 9.0it/s]')\n"
        f"deadline = time.time() + 20\nwhile not os.path.exists({str(go)!r}) and time.time() < deadline:\n"
        "    time.sleep(0.05)\n",
    )
    out = io.StringIO()
    demo = Demo(tmp_path / "run", ou_root=ou, out=out)
    demo.progress_interval = 0.5
    job = threading.Thread(target=demo.ou, args=("stub", "train", ["a=1"]), kwargs={"threads": 2})
    job.start()
    log = tmp_path / "run" / "logs" / "stub.log"
    deadline = time.time() + 20
    while time.time() < deadline and not ("100/100" in out.getvalue() and "threads 2" in log.read_text()):
        time.sleep(0.05)
    streamed, shown = log.read_text(), out.getvalue()
    go.write_text("")
    job.join(timeout=30)
    assert "threads 2" in streamed and str(tmp_path / "run" / ".hf_datasets_cache") in streamed
    assert "stub: 100% 100/100 steps [" in shown and "steps/s]" in shown
    assert "stub: done in" in out.getvalue() and "[1/9 OU runs]" in out.getvalue()


def test_a_failing_ou_command_names_its_log(tmp_path) -> None:
    from duet_plugin.demo.pipeline import DemoStepFailed

    ou = _stub_ou(tmp_path / "ou", "import sys\nprint('boom: bad override')\nsys.exit(3)\n")
    demo = Demo(tmp_path / "run", ou_root=ou, out=__import__("io").StringIO())
    with pytest.raises(DemoStepFailed, match=r"(?s)stub failed \(exit 3\).*stub\.log.*boom: bad override"):
        demo.ou("stub", "train", [])


def test_evaluation_recomputes_metrics_in_a_reused_folder(tmp_path, monkeypatch) -> None:
    """OU's evaluator reuses the metrics already in output_dir unless told to overwrite (a rerun would report stale
    numbers)."""
    monkeypatch.setattr("duet_plugin.demo.pipeline.find_ou_root", lambda root: tmp_path)
    demo = Demo(tmp_path / "run")
    calls = []
    monkeypatch.setattr(demo, "ou", lambda name, script, args, cwd=None, threads=1: calls.append(args))
    demo.evaluate("eval_x", tmp_path / "model", tmp_path / "model" / "evals", None)
    assert "eval.tofu.overwrite=true" in calls[0]


def test_undo_runs_from_the_fine_tuned_model_with_the_callers_overrides(tmp_path, monkeypatch) -> None:
    """Demo.undo (the UNDO scripts' shared command): OU's UNDO experiment from the demo's fine-tuned model, on the
    demo's splits, the caller's overrides last (so they win), the run's folder returned."""
    monkeypatch.setattr("duet_plugin.demo.pipeline.find_ou_root", lambda root: tmp_path)
    demo = Demo(tmp_path / "run")
    calls = []
    monkeypatch.setattr(demo, "ou", lambda name, script, args, cwd=None, threads=1: calls.append((name, script, args)))
    out = demo.undo("demo_undo_x", ["trainer.method_args.alpha=0.9", "trainer.args.seed=4"], threads=2)
    assert out == tmp_path / "run" / "saves" / "unlearn" / "demo_undo_x"
    name, script, args = calls[0]
    assert (name, script) == ("unlearn_demo_undo_x", "train")
    assert args[:3] == ["--config-name=unlearn.yaml", "experiment=unlearn/tofu/undo", "task_name=demo_undo_x"]
    model = tmp_path / "run" / "saves" / "finetune" / "demo_full"
    assert f"model.model_args.pretrained_model_name_or_path={model}" in args
    assert f"retain_split={demo.retain_split}" in args and f"forget_split={demo.settings.forget_split}" in args
    assert args[-2:] == ["trainer.method_args.alpha=0.9", "trainer.args.seed=4"]


def test_a_stopping_demo_kills_the_running_ou_job(tmp_path) -> None:
    """When one job fails or the user presses Ctrl-C, the OU run still going in the other worker is stopped."""
    import io
    import threading
    import time

    from duet_plugin.demo.pipeline import DemoStepFailed

    ou = _stub_ou(tmp_path / "ou", "import time\nprint('working', flush=True)\ntime.sleep(60)\n")
    demo = Demo(tmp_path / "run", ou_root=ou, out=io.StringIO())
    failures = []

    def job() -> None:
        try:
            demo.ou("slow", "train", [])
        except DemoStepFailed as err:
            failures.append(err)

    worker = threading.Thread(target=job)
    started = time.monotonic()
    worker.start()
    time.sleep(1.0)
    demo._abort.set()
    worker.join(timeout=20)
    assert not worker.is_alive() and time.monotonic() - started < 20
    assert failures and "slow failed" in str(failures[0])
