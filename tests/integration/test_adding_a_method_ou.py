"""docs/adding-a-method.md, followed to the letter: a throwaway method (KLDistill, plain KL distillation from the
prompt-steered teacher) in four files (core objective, trainer class, YAML, this test) is registered in OU,
composes, trains one step through OU's own pipeline, and joins the reproduction grid; no other file is touched."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from duet_plugin.openunlearning.cpu_overrides import train_overrides

pytestmark = pytest.mark.ou

#: duet_plugin/core/kl_distill.py of the throwaway method.
CORE = """
from dataclasses import dataclass

from duet_plugin.core.collate import gather_positions
from duet_plugin.core.duet import DUETConfig
from duet_plugin.core.losses import topk_distillation_loss
from duet_plugin.core.options import OptionError, option
from duet_plugin.core.teacher_targets import stream_targets


@dataclass
class KLDistillConfig(DUETConfig):
    kl_scale: float = option(1.0, help="Multiplies the KL from the teacher's top-K plus a tail bucket.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl_scale <= 0:
            raise OptionError("kl_scale", f"must be positive, got {self.kl_scale!r}.")


def kl_distill_loss(model, streams, cfg, pad_id, eos_ids, **source):
    # source: where the targets come from, as the trainer's teacher_source gives it (teacher, store, prefix caches)
    target, loss, parts = cfg.target_config(), 0.0, {}
    for stream, batch in streams.items():
        targets, batch = stream_targets(stream, batch, target, pad_id, eos_ids, **source)
        logits = model(input_ids=batch["student_input_ids"], attention_mask=batch["student_attention_mask"]).logits
        at = gather_positions(logits, batch["student_positions"], batch["position_mask"])
        term = cfg.kl_scale * topk_distillation_loss(at, targets.to(at.device), distance="kl")
        loss, parts[stream] = loss + term, term.item()
    return loss, parts
"""

#: duet_plugin/openunlearning/trainers/kl_distill.py of the throwaway method.
TRAINER = """
from kl_method.core import KLDistillConfig, kl_distill_loss

from duet_plugin.openunlearning.trainers.steered import SteeredTeacherTrainer


class KLDistill(SteeredTeacherTrainer):
    config_class = KLDistillConfig
    log_prefix = "kldistill"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        streams, teacher = self.streams(inputs), self.teacher_source(model)
        loss, parts = kl_distill_loss(model, streams, self.cfg, self.data_collator.pad_id, self.eos_ids, **teacher)
        self.log_terms(parts)
        return (loss, None) if return_outputs else loss
"""

#: duet_plugin/configs/trainer/KLDistill.yaml of the throwaway method.
YAML = """
defaults:
  - DUET
handler: KLDistill
method_args:
  kl_scale: 2.0
"""


@pytest.fixture
def method(ou_imported, tmp_path, monkeypatch):
    """The method's files written where a test can put them (a package on sys.path, a config folder)."""
    package = tmp_path / "kl_method"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "core.py").write_text(textwrap.dedent(CORE))
    (package / "trainer.py").write_text(textwrap.dedent(TRAINER))
    configs = tmp_path / "configs" / "trainer"
    configs.mkdir(parents=True)
    (configs / "KLDistill.yaml").write_text(textwrap.dedent(YAML))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("kl_method.trainer")
    yield module, tmp_path / "configs"
    from trainer import TRAINER_REGISTRY

    from duet_plugin.openunlearning.trainers.base import PLUGIN_TRAINERS

    PLUGIN_TRAINERS.pop("KLDistill", None)  # a throwaway: later registrations must not see it
    TRAINER_REGISTRY.pop("KLDistill", None)
    for name in [n for n in sys.modules if n.startswith("kl_method")]:
        del sys.modules[name]


def test_a_new_method_registers_composes_trains_and_joins_the_grid(method, workspace, monkeypatch) -> None:
    from hydra import compose, initialize_config_dir
    from trainer import TRAINER_REGISTRY, load_trainer

    from duet_plugin.openunlearning.registration import register
    from duet_plugin.reproduce import resolve_methods

    module, configs = method
    register()
    assert TRAINER_REGISTRY["KLDistill"] is module.KLDistill

    overrides = [
        "experiment=unlearn/tofu/duet",
        "trainer=KLDistill",
        "task_name=kl_distill",
        f"hydra.searchpath=[file://{configs}]",
        *train_overrides(workspace / "tiny"),
        "trainer.args.per_device_train_batch_size=4",
        "++trainer.args.max_steps=1",
        "trainer.args.logging_steps=1",
        f"paths.output_dir={workspace / 'saves' / 'kl_distill'}",
    ]
    ou_root = Path(sys.modules["trainer"].__file__).parents[2]
    with initialize_config_dir(config_dir=str(ou_root / "configs"), version_base=None):
        cfg = compose(config_name="unlearn.yaml", overrides=overrides)
    assert cfg.trainer.handler == "KLDistill"
    assert cfg.trainer.method_args.kl_scale == 2.0 and cfg.trainer.method_args.top_k == 10  # inherited from DUET

    from data import get_collators, get_data
    from model import get_model

    monkeypatch.chdir(workspace)  # OU's data paths (locuslab/TOFU) are relative to the run's folder
    model, tokenizer = get_model(cfg.model)
    data = get_data(cfg.data, mode="unlearn", tokenizer=tokenizer, template_args=cfg.model.template_args)
    collator = get_collators(cfg.collator, tokenizer=tokenizer)
    trainer, _ = load_trainer(
        cfg.trainer, model, data.get("train"), None, tokenizer, collator, None, cfg.model.template_args
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    moved = max((p.detach() - b).abs().max().item() for p, b in zip(trainer.model.parameters(), before, strict=True))
    assert trainer.state.global_step == 1 and moved > 0
    logged = trainer.state.log_history[0]
    assert logged["kldistill/forget"] > 0 and logged["kldistill/retain"] > 0
    assert torch.isfinite(torch.tensor(logged["loss"]))

    with pytest.raises(ValueError, match=r"trainer\.method_args\.kl_scale must be positive"):
        module.KLDistill(model=model, tokenizer=tokenizer, args=trainer.args, kl_scale=0.0)

    [grid_method] = resolve_methods("tofu", ["KLDistill"], trainer_config_dirs=[configs / "trainer"])
    assert (grid_method.experiment, grid_method.trainer) == ("unlearn/tofu/duet", "KLDistill")
