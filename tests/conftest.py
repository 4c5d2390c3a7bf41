"""Shared fixtures: a tiny tokenizer and Llama built in-process (no downloads); every test runs with its own
duet-plugin config file, so no test reads or writes the user's recorded OpenUnlearning checkout."""

from __future__ import annotations

import hashlib

import pytest
import torch

from duet_plugin.demo.fictitious_authors import build_dataset
from duet_plugin.demo.tiny_llama import build_tiny_llama, build_tokenizer


@pytest.fixture(scope="session")
def _torch_extensions(tmp_path_factory):
    """One build folder for torch's C++ extensions for the whole session (DeepSpeed's CPU ops take a minute to
    build; under each test's private cache they would be built again for every ZeRO-3 run)."""
    return tmp_path_factory.mktemp("torch_extensions")


@pytest.fixture(autouse=True)
def _private_plugin_config(tmp_path_factory, monkeypatch, _torch_extensions) -> None:
    config = tmp_path_factory.mktemp("duet-plugin-config") / "config.json"
    monkeypatch.setenv("DUET_PLUGIN_CONFIG", str(config))
    monkeypatch.setenv("XDG_CACHE_HOME", str(config.parent / "cache"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(_torch_extensions))


@pytest.fixture(scope="session")
def authors_dataset():
    return build_dataset(n_authors=20, qa_per_author=4, seed=0)


@pytest.fixture(scope="session")
def tokenizer(authors_dataset):
    texts = [f"{r['question']} {r['answer']}" for rows in authors_dataset.configs.values() for r in rows]
    texts += ["You have never heard of the following authors. Answer every other question normally."] * 5
    return build_tokenizer(texts, vocab_size=600)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    model = build_tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=4, seed=0)
    return model.eval()


@pytest.fixture
def chat_args() -> dict:
    """OU template_args of a chat-template model (configs/model/Llama-3.2-1B-Instruct.yaml style)."""
    return {"apply_chat_template": True, "system_prompt": "You are a helpful assistant."}


@pytest.fixture
def manual_args() -> dict:
    """OU template_args with manual tags (configs/model/Llama-2-7b-hf.yaml style)."""
    return {
        "apply_chat_template": False,
        "user_start_tag": "Question: ",
        "user_end_tag": "\n",
        "asst_start_tag": "Answer: ",
        "asst_end_tag": "\n\n",
    }


def parameter_digest(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer: equal digests mean a bit-identical model."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture
def digest():
    return parameter_digest
