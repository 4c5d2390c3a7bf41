"""MUSE- and WMDP-style local data made from fictitious-author QA, in the layouts OU's configs read.

Nothing here touches the Hub: every function returns file contents (``{path: text}``) or writes them.

* :func:`hub_dataset_files` / :func:`write_hub_dataset`: a local Hub-style dataset folder, one JSON file per
  (config, split) and a card naming them, so that ``datasets.load_dataset(repo, name=..., split=...)`` run from
  ``root`` reads it (e.g. ``root/muse-bench/MUSE-News`` for OU's ``configs/data/datasets/MUSE_*.yaml``).
* :func:`muse_configs`: every MUSE config/split OU's MUSE data and eval configs read: ``raw`` (``forget``,
  ``retain1``), ``knowmem`` (``forget_qa``, ``forget_qa_icl``, ``retain_qa``, ``retain_qa_icl``), ``verbmem``
  (``forget``) and ``privleak`` (``forget``, ``holdout``).
* :func:`workspace_muse_configs`: the integration tests' MUSE-News (``tests/integration/conftest.py``).
* :func:`wmdp_corpus_files`: ``data/wmdp/wmdp-corpora/<split>-{forget,retain}-corpus.jsonl`` as OU's
  ``setup_data.py --wmdp`` lays them out (OU reads them with the ``text`` loader: one document per line).
* :func:`mcq_task_files`: a local lm-eval multiple-choice task (YAML + JSONL) for ``include_path``.
* :func:`demo_muse_files` / :func:`demo_wmdp_files`: the CPU reproduction grid's stand-ins built from a finished
  ``duet-plugin demo`` folder (``duet_plugin.reproduce``, ``--profile cpu``): the forget side is the demo's forget
  authors (which the demo's fine-tuned model knows and its retain-only model never saw), the retain side the other
  authors, MUSE's privleak holdout the demo's holdout authors (no model saw them). The lm-eval tasks are named
  ``demo_*``: they are stand-ins for WMDP and MMLU, not those benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Configs = dict[str, dict[str, list[dict]]]

#: MUSE's Hub repositories under the working directory (OU: ``path: muse-bench/MUSE-${data_split}``).
MUSE_REPO = "muse-bench/MUSE-{split}"
#: OU's WMDP corpora folder (configs/data/datasets/WMDP_*.yaml), relative to the working directory.
WMDP_CORPORA = Path("data") / "wmdp" / "wmdp-corpora"
#: Where the demo's lm-eval stand-in tasks go (relative to the demo folder): the ``include_path`` of its evals.
DEMO_MCQ_DIR = Path("data") / "wmdp" / "demo-mcq"
#: The demo's lm-eval stand-ins for WMDP's forget task and for MMLU (named so that no output calls them WMDP/MMLU).
DEMO_FORGET_TASK = "demo_forget_mcq"
DEMO_GENERAL_TASK = "demo_general_mcq"
#: Document layouts of the demo stand-ins, per split: one short document per fact (MUSE News: many short articles;
#: WMDP cyber: one text per line) or one passage per author (MUSE Books: long passages; WMDP bio: papers).
DEMO_LAYOUTS = {"News": "fact", "Books": "author", "cyber": "fact", "bio": "author"}
N_ICL = 3


# -- generic writers ---------------------------------------------------------------------------------------------


def hub_dataset_files(root: Path, repo: str, configs: Mapping[str, Mapping[str, list[dict]]]) -> dict[Path, str]:
    """The files of a local Hub-style dataset ``root/repo``: one JSON file per (config, split) and a README card
    whose ``configs`` list names them (what ``load_dataset(repo, name=config, split=split)`` reads)."""
    folder = Path(root) / repo
    files: dict[Path, str] = {}
    card = ["---", "configs:"]
    for config, splits in configs.items():
        card += [f"- config_name: {config}", "  data_files:"]
        for split, rows in splits.items():
            files[folder / f"{config}_{split}.json"] = json.dumps(rows)
            card += [f"  - split: {split}", f"    path: {config}_{split}.json"]
    files[folder / "README.md"] = "\n".join([*card, "---", ""])
    return files


def write_files(files: Mapping[Path, str]) -> None:
    """Write ``{path: text}``, making folders; a file whose text is unchanged is left alone (so its mtime, and any
    datasets cache keyed on it, stays)."""
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)


def write_hub_dataset(root: Path, repo: str, configs: Mapping[str, Mapping[str, list[dict]]]) -> Path:
    """Write :func:`hub_dataset_files`; returns the dataset folder."""
    write_files(hub_dataset_files(root, repo, configs))
    return Path(root) / repo


def verbmem_rows(texts: Sequence[str], prompt_words: int | None = None) -> list[dict]:
    """MUSE verbmem rows ``{"prompt", "gt"}``: each text's first words as the prompt, the rest as the ground truth.
    ``prompt_words``: that many words; ``None``: the first sentence without its last third (at least 2 words), so
    that the prompt stops before the fact the sentence ends with."""
    rows = []
    for text in texts:
        words = text.split()
        if prompt_words is None:
            first = text.split(". ", 1)[0].split()
            k = max(1, len(first) - max(2, len(first) // 3))
        else:
            k = prompt_words
        rows.append({"prompt": " ".join(words[:k]), "gt": " ".join(words[k:])})
    return rows


def muse_configs(
    forget: Sequence[str],
    retain: Sequence[str],
    holdout: Sequence[str],
    forget_qa: Sequence[dict],
    retain_qa: Sequence[dict],
    forget_icl: Sequence[dict],
    retain_icl: Sequence[dict],
    verbmem: Sequence[dict],
) -> Configs:
    """MUSE's configs as OU reads them: raw text, knowmem QA (with in-context examples), verbmem and privleak."""

    def qa(rows: Sequence[dict]) -> list[dict]:
        return [{"question": r["question"], "answer": r["answer"]} for r in rows]

    return {
        "raw": {"forget": [{"text": t} for t in forget], "retain1": [{"text": t} for t in retain]},
        "knowmem": {
            "forget_qa": qa(forget_qa),
            "forget_qa_icl": qa(forget_icl),
            "retain_qa": qa(retain_qa),
            "retain_qa_icl": qa(retain_icl),
        },
        "verbmem": {"forget": list(verbmem)},
        "privleak": {"forget": [{"text": t} for t in forget], "holdout": [{"text": t} for t in holdout]},
    }


def _paragraphs(rows: Sequence[dict], size: int = 4) -> list[str]:
    return [" ".join(r["answer"] for r in rows[i : i + size]) for i in range(0, len(rows), size)]


def workspace_muse_configs(dataset: Any) -> Configs:
    """The integration tests' MUSE-News: paragraphs of 4 answers of ``forget10`` / ``retain90``, 6 QA (+ 2
    in-context) per side, verbmem prompts of 8 words, the first 4 retain paragraphs as the privleak holdout."""
    forget, retain = _paragraphs(dataset.configs["forget10"]), _paragraphs(dataset.configs["retain90"])
    f_rows, r_rows = dataset.configs["forget10"], dataset.configs["retain90"]
    return muse_configs(
        forget=forget,
        retain=retain,
        holdout=retain[:4],
        forget_qa=f_rows[:6],
        retain_qa=r_rows[:6],
        forget_icl=f_rows[:8][6:],
        retain_icl=r_rows[:8][6:],
        verbmem=verbmem_rows(forget, prompt_words=8),
    )


def wmdp_corpus_files(
    root: Path, split: str, forget: Sequence[str], retain: Sequence[str], json_lines: bool = False
) -> dict[Path, str]:
    """``root/data/wmdp/wmdp-corpora/<split>-{forget,retain}-corpus.jsonl``, one document per line: plain text (as
    WMDP's cyber corpora, and what OU's ``text`` loader trains on) or ``{"text": ...}`` JSON lines."""
    folder = Path(root) / WMDP_CORPORA
    out = {}
    for name, texts in (("forget", forget), ("retain", retain)):
        lines = [json.dumps({"text": t}) if json_lines else " ".join(t.split()) for t in texts]
        out[folder / f"{split}-{name}-corpus.jsonl"] = "\n".join(lines) + "\n"
    return out


def mcq_rows(rows: Sequence[dict]) -> list[dict]:
    """Multiple-choice rows ``{"question", "choices": [4], "answer": index}`` from QA rows with three perturbed
    (wrong) answers; the true answer's position cycles through 0..3."""
    out = []
    for i, row in enumerate(rows):
        wrong = list(row["perturbed_answer"])[:3]
        position = i % (len(wrong) + 1)
        choices = [*wrong[:position], row["answer"], *wrong[position:]]
        out.append({"question": row["question"], "choices": choices, "answer": position})
    return out


def mcq_task_files(folder: Path, task: str, rows: Sequence[dict], description: str) -> dict[Path, str]:
    """A local lm-eval multiple-choice task: ``folder/<task>.jsonl`` and ``folder/<task>.yaml`` (the question as the
    context, each full answer text as a choice, accuracy). Point ``include_path`` at ``folder``."""
    data = Path(folder) / f"{task}.jsonl"
    config = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "answer",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1, "description": description},
    }
    return {
        data: "".join(json.dumps(r) + "\n" for r in rows),
        Path(folder) / f"{task}.yaml": f"# {description}\n" + yaml.safe_dump(config, sort_keys=False),
    }


# -- the demo's stand-ins ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoRows:
    """The TOFU-layout rows of a demo folder that the stand-ins are made of."""

    forget: list[dict]  # the demo's forget split (what its fine-tuned model must unlearn)
    retain: list[dict]  # the matching retain split
    holdout: list[dict]  # authors no demo model was trained on
    retain_eval: list[dict]  # TOFU's retain_perturbed: retain QA OU evaluates on
    general: list[dict]  # real-author and world-fact QA

    @classmethod
    def load(cls, workdir: Path, forget_split: str) -> DemoRows:
        tofu = Path(workdir) / "locuslab" / "TOFU"
        pct = forget_split.removeprefix("forget")

        def rows(name: str) -> list[dict]:
            return json.loads((tofu / f"{name}.json").read_text())

        return cls(
            forget=rows(forget_split),
            retain=rows(f"retain{100 - int(pct)}"),
            holdout=rows(f"holdout{pct}"),
            retain_eval=rows("retain_perturbed"),
            general=rows("real_authors_perturbed") + rows("world_facts_perturbed"),
        )


def fact_documents(rows: Sequence[dict]) -> list[str]:
    """One document per fact: its answer and its paraphrased answer (both in the demo's fine-tuning data)."""
    docs = []
    for r in rows:
        para = r.get("paraphrased_answer")
        docs.append(r["answer"] if not para or para == r["answer"] else f"{r['answer']} {para}")
    return docs


def author_documents(rows: Sequence[dict]) -> list[str]:
    """One passage per author: every answer about the author, then every paraphrased answer."""
    by_author: dict[str, list[dict]] = {}
    for r in rows:
        by_author.setdefault(r["author"], []).append(r)
    passages = []
    for items in by_author.values():
        answers = [r["answer"] for r in items]
        paras = [r["paraphrased_answer"] for r in items if r.get("paraphrased_answer") not in (None, r["answer"])]
        passages.append(" ".join(answers + paras))
    return passages


def demo_documents(rows: Sequence[dict], layout: str) -> list[str]:
    if layout == "fact":
        return fact_documents(rows)
    if layout == "author":
        return author_documents(rows)
    raise ValueError(f"Unknown layout {layout!r}; use fact or author.")


def demo_muse_configs(rows: DemoRows, split: str) -> Configs:
    """MUSE-``split`` from the demo: raw and privleak documents in the split's layout (``DEMO_LAYOUTS``), knowmem
    forget QA = the forget split's QA, retain QA = TOFU's retain_perturbed, in-context examples = holdout QA (facts
    no model knows: they show the format only), privleak holdout = the holdout authors' documents. verbmem: each
    forget answer sentence (the text the demo model was fine-tuned on) cut before its last third; a whole document
    is no prompt for a model that learnt each fact as one answer (measured on the demo: the fine-tuned model
    completes a cut answer at rougeL F1 0.48 against 0.22 for the retain-only model, whole passages at 0.01)."""
    layout = DEMO_LAYOUTS[split]
    forget = demo_documents(rows.forget, layout)
    icl = rows.holdout[:N_ICL]
    return muse_configs(
        forget=forget,
        retain=demo_documents(rows.retain, layout),
        holdout=demo_documents(rows.holdout, layout),
        forget_qa=rows.forget,
        retain_qa=rows.retain_eval,
        forget_icl=icl,
        retain_icl=icl,
        verbmem=verbmem_rows([r["answer"] for r in rows.forget]),
    )


def demo_muse_files(workdir: Path, forget_split: str, splits: Sequence[str]) -> dict[Path, str]:
    """``workdir/muse-bench/MUSE-<split>/`` for each split (News, Books), from the demo's data."""
    rows = DemoRows.load(workdir, forget_split)
    files: dict[Path, str] = {}
    for split in splits:
        files.update(hub_dataset_files(Path(workdir), MUSE_REPO.format(split=split), demo_muse_configs(rows, split)))
    return files


def demo_wmdp_files(workdir: Path, forget_split: str, splits: Sequence[str]) -> dict[Path, str]:
    """The WMDP-layout corpora of each split (cyber, bio; plain text lines) and the two lm-eval stand-in tasks
    (:data:`DEMO_FORGET_TASK`: the forget authors' facts; :data:`DEMO_GENERAL_TASK`: retain-author, real-author
    and world-fact questions, in MMLU's place) under ``workdir/data/wmdp/demo-mcq``."""
    rows = DemoRows.load(workdir, forget_split)
    workdir = Path(workdir)
    files: dict[Path, str] = {}
    for split in splits:
        layout = DEMO_LAYOUTS[split]
        files.update(
            wmdp_corpus_files(workdir, split, demo_documents(rows.forget, layout), demo_documents(rows.retain, layout))
        )
    mcq = workdir / DEMO_MCQ_DIR
    files.update(
        mcq_task_files(
            mcq,
            DEMO_FORGET_TASK,
            mcq_rows(rows.forget),
            "duet-plugin demo stand-in for a WMDP forget task (not WMDP): the demo's forget authors' facts, the true "
            "answer against three perturbed ones.",
        )
    )
    files.update(
        mcq_task_files(
            mcq,
            DEMO_GENERAL_TASK,
            mcq_rows(rows.retain_eval + rows.general),
            "duet-plugin demo stand-in for MMLU (not MMLU): retain-author, real-author and world-fact questions, the "
            "true answer against three perturbed ones.",
        )
    )
    return files
