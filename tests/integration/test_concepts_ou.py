"""OU's train.py with experiment=unlearn/muse/duet on raw news text and no prefix.concepts: the subjects are derived
and logged while the trainer is built, before any compute, or, when no subject stands out, the run stops there and
asks for them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from duet_plugin.demo.benchmark_layouts import muse_configs, verbmem_rows, write_hub_dataset
from duet_plugin.openunlearning.cpu_overrides import train_overrides

pytestmark = pytest.mark.ou
DATA = Path(__file__).parents[1] / "data"


def _articles(name: str) -> list[str]:
    return [a for a in (DATA / name).read_text(encoding="utf-8").split("\n\n") if a.strip()]


def _news_folder(root: Path, forget: list[str], retain: list[str]) -> Path:
    """``root`` laid out as ``muse-bench/MUSE-News`` (raw forget/retain1 and a token eval split) for OU to read."""
    qa = [{"question": "Who visited Ballina?", "answer": "Joe Biden"}] * 2
    write_hub_dataset(
        root,
        "muse-bench/MUSE-News",
        muse_configs(forget, retain, retain[:2], qa, qa, qa, qa, verbmem_rows(forget[:2], prompt_words=8)),
    )
    return root


def _train(run_ou, workspace: Path, folder: Path, task: str):
    """OU's train.py up to the trainer (do_train=false): the concepts are settled while the trainer is built."""
    args = [
        "--config-name=unlearn.yaml",
        "experiment=unlearn/muse/duet",
        f"task_name={task}",
        *train_overrides(workspace / "tiny"),
        "trainer.args.per_device_train_batch_size=4",
        "trainer.args.gradient_accumulation_steps=1",
        "trainer.args.logging_steps=1",
        "++trainer.args.do_train=false",
    ]
    return run_ou("train", args, check=False, cwd=folder)


def test_news_subjects_are_derived_and_logged_before_training(run_ou, workspace, tmp_path) -> None:
    folder = _news_folder(tmp_path, _articles("news_forget.txt"), _articles("news_retain.txt"))
    proc = _train(run_ou, workspace, folder, "news_subjects")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    derived = re.search(r"concepts derived from the forget data \(\d+ records\): (\[.*?\]);", log)
    assert derived and derived.group(1) == "['Joe Biden', 'Storm Ciarán', 'Marguerite Ashdown-Kerr']"
    assert "You have never learned anything about Joe Biden, Storm Ciarán and Marguerite Ashdown-Kerr." in log


def test_news_without_subjects_stops_before_any_step(run_ou, workspace, tmp_path) -> None:
    news = _articles("news_retain.txt")  # forget and retain from the same news, as MUSE-News's are
    proc = _train(run_ou, workspace, _news_folder(tmp_path, news[0::2], news[1::2]), "news_no_subjects")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "trainer.method_args.prefix.concepts is not set and cannot be derived" in log
    assert "Top candidates: 'Rishi Sunak'" in log
    assert "Teacher prefix" not in log  # stopped while the trainer was being built
