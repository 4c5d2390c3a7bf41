"""LoRA core (``duet_plugin.core.lora``): config validation, wrapping, the adapters-disabled teacher, merged saving and
gradient checkpointing, on the tiny Llama."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

peft = pytest.importorskip("peft")

from duet_plugin.core.lora import (  # noqa: E402 - after the importorskip
    ADAPTER_DIR,
    AdaptersDisabled,
    LoRAConfig,
    adapted_module_names,
    is_peft_model,
    merged_state_dict,
    save_merged,
    target_module_names,
    wrap,
)
from duet_plugin.openunlearning.trainers.lora_saving import save_trainer_output, zero3_requested  # noqa: E402

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]


@pytest.fixture
def model(tiny_model):
    """A fresh copy of the session's tiny Llama (wrapping changes a model in place)."""
    return copy.deepcopy(tiny_model)


@pytest.fixture
def ids(tokenizer) -> torch.Tensor:
    return tokenizer(["Who wrote the novel?", "Where was the author born"], return_tensors="pt", padding=True)[
        "input_ids"
    ]


def _train_adapters(wrapped, ids: torch.Tensor, steps: int = 2) -> None:
    """A few SGD steps on the adapters, so that B != 0 and the adapted model differs from the base."""
    wrapped.train()
    opt = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=1.0)
    for _ in range(steps):
        wrapped(input_ids=ids).logits.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    wrapped.eval()


# -- config ----------------------------------------------------------------------------------------------------
def test_null_is_full_fine_tuning_and_a_block_fills_defaults() -> None:
    assert LoRAConfig.from_config(None) is None and LoRAConfig.from_config(False) is None
    assert LoRAConfig.from_config(True) == LoRAConfig() == LoRAConfig.from_config({})
    cfg = LoRAConfig.from_config(OmegaConf.create({"r": 4, "target_modules": ["q_proj", "o_proj"]}))
    assert cfg == LoRAConfig(r=4, alpha=16.0, dropout=0.0, target_modules=("q_proj", "o_proj"))
    assert LoRAConfig.from_config({"target_modules": "all-linear"}).target_modules == "all-linear"
    peft_cfg = cfg.peft_config()
    assert (peft_cfg.r, peft_cfg.lora_alpha, peft_cfg.bias) == (4, 16.0, "none")
    assert set(peft_cfg.target_modules) == {"q_proj", "o_proj"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"rank": 8}, r"^lora has unknown key\(s\) \['rank'\]; LoRA takes"),
        ({"r": 0}, r"lora\.r must be an integer >= 1"),
        ({"r": 2.5}, r"lora\.r must be an integer >= 1"),
        ({"r": True}, r"lora\.r must be an integer >= 1"),
        ({"alpha": 0}, r"lora\.alpha must be a positive number"),
        ({"dropout": 1.0}, r"lora\.dropout must be in \[0, 1\)"),
        ({"target_modules": []}, r"lora\.target_modules must be a non-empty list"),
        ({"target_modules": ["q_proj", ""]}, r"lora\.target_modules must be a non-empty list"),
        ({"target_modules": "q_proj("}, r"is not a valid regex"),
        ("yes", r"lora must be null \(full fine-tuning\) or a mapping"),
    ],
)
def test_bad_config_is_refused_with_the_fix(value, message) -> None:
    with pytest.raises(ValueError, match=message):
        LoRAConfig.from_config(value)


# -- target modules --------------------------------------------------------------------------------------------
def test_target_modules_resolve_like_peft(model) -> None:
    layers = [f"model.layers.{i}" for i in range(2)]
    assert target_module_names(model, LoRAConfig()) == [
        f"{layer}.self_attn.{m}" for layer in layers for m in ("q_proj", "v_proj")
    ]
    regex = target_module_names(model, LoRAConfig(target_modules=r".*layers\.1\.mlp\..*_proj"))
    assert regex == [f"model.layers.1.mlp.{m}" for m in MLP]
    every = target_module_names(model, LoRAConfig(target_modules="all-linear"))
    assert len(every) == 2 * (len(ATTENTION) + len(MLP)) and "lm_head" not in every


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (["q_proj", "qkv_proj"], r"lora\.target_modules entries \['qkv_proj'\] match no module of the model"),
        ("attn\\.q.*", r"target_modules='attn\\\\.q\.\*' \(a regex over full module paths"),
        (["mlp"], r"matches \['model\.layers\.0\.mlp', 'model\.layers\.1\.mlp'\] \(LlamaMLP\), which are not linear"),
        (["lm_head"], r"output head 'lm_head', whose weight is tied to the input embeddings"),
    ],
)
def test_target_modules_that_match_nothing_usable_are_refused(model, targets, message) -> None:
    with pytest.raises(ValueError, match=message) as err:
        wrap(model, LoRAConfig(target_modules=targets))
    if "tied" not in message:  # the fix: the model's linear layers, by short name
        assert f"linear layers are {[*ATTENTION, *MLP, 'lm_head']}" in str(err.value)
    assert not is_peft_model(model) and not any("lora" in n for n, _ in model.named_parameters())


def test_wrap_adapts_only_the_targeted_modules(model) -> None:
    total = sum(p.numel() for p in model.parameters())
    cfg = LoRAConfig(r=4, target_modules=["q_proj", "down_proj"])
    predicted = target_module_names(model, cfg)
    wrapped = wrap(model, cfg)
    assert adapted_module_names(wrapped) == predicted  # peft adapts exactly the modules the check resolved
    assert {n.rsplit(".", 1)[-1] for n in predicted} == {"q_proj", "down_proj"} and len(predicted) == 4
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    hidden, inter = 32, 64  # q_proj: 32 -> 32, down_proj: 64 -> 32, r = 4, 2 layers
    assert sum(p.numel() for n, p in wrapped.named_parameters() if n in trainable) == 2 * 4 * (
        (hidden + hidden) + (inter + hidden)
    )
    assert sum(p.numel() for n, p in wrapped.named_parameters() if n not in trainable) == total
    with pytest.raises(ValueError, match="already carries peft adapters"):
        wrap(wrapped, LoRAConfig())


# -- the adapters-disabled teacher -----------------------------------------------------------------------------
def test_adapters_disabled_is_exactly_the_base_after_training(model, ids) -> None:
    base = copy.deepcopy(model)
    wrapped = wrap(model, LoRAConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        assert torch.equal(wrapped(input_ids=ids).logits, base(input_ids=ids).logits)  # B = 0 at the start
    _train_adapters(wrapped, ids)
    teacher = AdaptersDisabled(wrapped)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        assert not torch.allclose(wrapped(input_ids=ids).logits, base_logits, atol=1e-3)  # the adapters moved
    wrapped.train()  # the student's mode survives a teacher call, which runs in eval mode without gradient
    out = teacher(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert wrapped.training and not out.requires_grad
    assert torch.equal(out, base_logits)
    wrapped.eval()
    greedy = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(teacher.generate(input_ids=ids, **greedy), base.generate(input_ids=ids, **greedy))
    teacher.eval()
    teacher.train()
    assert not teacher.training and not wrapped.training  # train/eval on the teacher leave the student alone
    assert next(teacher.parameters()) is next(wrapped.parameters())  # the same weights, no copy
    with pytest.raises(TypeError, match="wraps a peft model"):
        AdaptersDisabled(base)


# -- merged saving ---------------------------------------------------------------------------------------------
def test_merged_checkpoint_is_a_plain_model_with_the_adapted_logits(model, ids, tmp_path, digest) -> None:
    start = copy.deepcopy(model)
    wrapped = wrap(model, LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    _train_adapters(wrapped, ids)
    before = digest(wrapped)
    save_merged(wrapped, tmp_path)
    assert digest(wrapped) == before and is_peft_model(wrapped)  # the trained model keeps its unmerged adapters

    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert not [k for k in keys if "lora" in k or "base_layer" in k]
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(plain).__name__ == "LlamaForCausalLM"
    assert set(plain.state_dict()) == set(copy.deepcopy(wrapped).merge_and_unload().state_dict())
    with torch.no_grad():
        expected = wrapped(input_ids=ids).logits
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, rtol=0, atol=1e-5)
        reference = copy.deepcopy(wrapped).merge_and_unload()
        torch.testing.assert_close(plain(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=1e-6)
    merged = merged_state_dict(wrapped)
    base = wrapped.get_base_model()
    assert merged["model.embed_tokens.weight"].data_ptr() == base.model.embed_tokens.weight.data_ptr()  # not copied
    adapter = json.loads((tmp_path / ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == {"q_proj", "v_proj", "up_proj"}
    reloaded = peft.PeftModel.from_pretrained(start, tmp_path / ADAPTER_DIR).eval()  # the adapter alone, on the start
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=0, atol=1e-6)


def test_trainer_output_is_the_merged_model_with_tokenizer_and_arguments(model, ids, tokenizer, tmp_path) -> None:
    """What a LoRA trainer's ``_save`` writes: save_merged's files, the tokenizer and ``training_args.bin``."""
    from transformers import AutoTokenizer, TrainingArguments

    wrapped = wrap(model, LoRAConfig(r=4, target_modules=["q_proj", "v_proj"]))
    _train_adapters(wrapped, ids)
    args = TrainingArguments(output_dir=str(tmp_path / "unused"), report_to="none", use_cpu=True, seed=7)
    save_trainer_output(wrapped, tmp_path / "out", args, tokenizer)
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / ADAPTER_DIR / "adapter_config.json").is_file()
    assert torch.load(out / "training_args.bin", weights_only=False).seed == 7
    assert (
        AutoTokenizer.from_pretrained(out)("Who wrote the novel?")["input_ids"]
        == tokenizer("Who wrote the novel?")["input_ids"]
    )
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(out)
        torch.testing.assert_close(plain(input_ids=ids).logits, wrapped(input_ids=ids).logits, rtol=0, atol=1e-5)
    save_trainer_output(wrapped, tmp_path / "no_tokenizer", args)
    assert not (tmp_path / "no_tokenizer" / "tokenizer_config.json").exists()


def test_zero3_is_recognised_from_the_training_arguments() -> None:
    """Before the Trainer exists: a --deepspeed config or accelerate launch's DeepSpeed plugin (stage from the file)."""
    from types import SimpleNamespace

    from accelerate.utils import DeepSpeedPlugin

    def plugin(stage: int) -> DeepSpeedPlugin:
        return DeepSpeedPlugin(hf_ds_config={"zero_optimization": {"stage": stage}})

    assert zero3_requested(SimpleNamespace(deepspeed_plugin=plugin(3)))
    assert not zero3_requested(SimpleNamespace(deepspeed_plugin=plugin(2)))
    assert zero3_requested(SimpleNamespace(hf_deepspeed_config=SimpleNamespace(is_zero3=lambda: True)))
    assert not zero3_requested(SimpleNamespace(hf_deepspeed_config=SimpleNamespace(is_zero3=lambda: False)))
    assert not zero3_requested(SimpleNamespace()) and not zero3_requested(None)


# -- gradient checkpointing ------------------------------------------------------------------------------------
def test_gradient_checkpointing_with_lora_backpropagates(model, ids) -> None:
    """Reentrant checkpointing (HF's default) with frozen embeddings needs inputs that require grad (OU #178)."""
    plain = copy.deepcopy(model)
    wrapped = wrap(model, LoRAConfig(r=4, target_modules="all-linear"))
    _train_adapters(wrapped, ids, steps=1)  # B != 0, so every adapter matrix gets a gradient
    reference = copy.deepcopy(wrapped).train()
    wrapped.train()
    wrapped.gradient_checkpointing_enable()  # what HF's Trainer does with args.gradient_checkpointing
    assert wrapped.get_base_model().is_gradient_checkpointing
    for m in (wrapped, reference):
        m(input_ids=ids).logits.pow(2).mean().backward()
    grads = {n: p.grad for n, p in wrapped.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    expected = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], msg=name)

    # The trap itself: peft alone (no enable_input_require_grads) under reentrant checkpointing loses the graph.
    bare = peft.get_peft_model(plain, LoRAConfig(r=4).peft_config()).train()
    bare.gradient_checkpointing_enable()
    with pytest.raises(RuntimeError, match="does not require grad"):
        bare(input_ids=ids).logits.pow(2).mean().backward()
