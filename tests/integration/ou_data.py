"""What the OU-backed metric tests share: OU's manual prompt template, the collator configs, a QADataset config over
local rows, and a digest of a model folder's files (to show an evaluation left the model as it was)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

#: OU's template_args without a chat template (the tiny tokenizer's ChatML is not needed for these checks).
MANUAL = {
    "apply_chat_template": False,
    "user_start_tag": "Question: ",
    "user_end_tag": "\n",
    "asst_start_tag": "Answer: ",
    "asst_end_tag": "\n\n",
}
COLLATOR = "DataCollatorForSupervisedDataset"
COLLATE = OmegaConf.create({COLLATOR: {"handler": COLLATOR, "args": {}}})
INDEXED = OmegaConf.create({COLLATOR: {"handler": COLLATOR, "args": {"index": "index"}}})


def qa_dataset(path: Path, rows: list[dict], access_key: str) -> dict:
    """An OU QADataset config (with ``access_key``) over a local JSON of the rows' questions and answers."""
    path.write_text(json.dumps([{"question": r["question"], "answer": r["answer"]} for r in rows]))
    hf_args = {"path": "json", "data_files": str(path), "split": "train"}
    return {"handler": "QADataset", "access_key": access_key, "args": {"hf_args": hf_args, "max_length": 64}}


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of each file directly in ``folder``, by name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}
