"""Reading an OU job's progress from its output, however the output is cut into chunks."""

from __future__ import annotations

import pytest

from duet_plugin.demo.progress import JobProgress


def _trainer_bar(n: int, total: int) -> str:
    return f"\r{100 * n // total:3d}%|###       | {n}/{total} [00:{n:02d}<00:10,  4.50it/s]"


@pytest.mark.parametrize("chunk_size", [7, 64, 256, 10_000])
def test_training_steps_survive_any_chunking(chunk_size: int) -> None:
    text = "Map: 100%|##########| 120/120 [00:00<00:00, 900 examples/s]\n"
    text += "".join(_trainer_bar(n, 800) for n in range(0, 300, 3)) + "\n{'loss': 1.2}\n"
    job = JobProgress("ft", started=0.0)
    totals = set()
    for i in range(0, len(text), chunk_size):
        job.feed(text[i : i + chunk_size])
        if job.total:
            totals.add(job.total)
    assert (job.step, job.total) == (297, 800)
    assert totals == {800}  # a bar cut at "| 137/80" is never read as another total


def test_the_line_has_a_rate_and_an_eta(monkeypatch) -> None:
    clock = iter([100.0, 110.0])
    monkeypatch.setattr("duet_plugin.demo.progress.time.monotonic", lambda: next(clock))
    job = JobProgress("finetune_demo_full", started=90.0)
    job.feed(_trainer_bar(10, 800))  # first bar seen at t=100
    job.feed(_trainer_bar(60, 800))
    line = job.line(now=110.0)
    # 50 steps in 10 s since the bar appeared: 5 steps/s, 740 left: 02:28
    assert line == "finetune_demo_full:   8% 60/800 steps [00:10<02:28, 5.00 steps/s]"


def test_evaluation_bars_are_not_steps_and_metrics_are_counted() -> None:
    job = JobProgress("eval_full", steps=False, metrics_total=4, started=0.0)
    assert "starting OpenUnlearning" in job.line(now=3.0)
    job.feed("[\x1b[36mmetrics\x1b[0m][INFO] - Evaluating forget_Q_A_Prob\n")
    job.feed("\r  0%|          | 0/1 [00:00<?, ?it/s]\r100%|##########| 1/1 [00:00<00:00, 33.67it/s]\n")
    job.feed("[metrics][INFO] - Evaluating forget_Q_A_ROUGE\n")
    assert job.total == 0 and job.metrics_done == 2
    assert job.line(now=4.0) == "eval_full:  50% 2/4 metrics [00:04<00:04, 2.0 s/metric] forget_Q_A_ROUGE"
    unknown = JobProgress("eval_retain", steps=False, started=0.0)
    unknown.feed("Evaluating privleak\n")
    assert unknown.line(now=5.0) == "eval_retain: metric 1 (privleak) [00:05]"


@pytest.mark.parametrize("chunk_size", [3, 5, 17, 10_000])
def test_evaluating_lines_survive_any_chunking(chunk_size: int) -> None:
    text = "".join(
        f"[metrics][INFO] - Evaluating {m}\r100%|#| 1/1 [00:00<00:00, 3.1it/s]\n"
        for m in ("forget_Q_A_Prob", "forget_Q_A_ROUGE", "model_utility")
    )
    job = JobProgress("eval", steps=False, started=0.0)
    for i in range(0, len(text), chunk_size):
        job.feed(text[i : i + chunk_size])
    assert (job.metrics_done, job.metric, job.total) == (3, "model_utility", 0)
