"""Registration into the real OU registries, and the prompt contract against OU's own preprocessing."""

from __future__ import annotations

import sys

import pytest

from duet_plugin.core.teacher import PromptRenderer
from duet_plugin.openunlearning.registration import RegistrationError, framework_detected, register

pytestmark = pytest.mark.ou


def test_plugin_components_are_registered(ou_imported) -> None:
    trainer, data = sys.modules["trainer"], sys.modules["data"]
    assert framework_detected()
    assert register() is True and register() is True  # idempotent
    assert trainer.TRAINER_REGISTRY["DUET"].__name__ == "DUET"
    assert trainer.TRAINER_REGISTRY["UNDO"].__name__ == "UNDO"
    assert sys.modules["evals.metrics"].METRICS_REGISTRY["quantization_attack"].name == "quantization_attack"
    assert "UnifiedQueryDataset" in data.DATASET_REGISTRY and "DUETCollator" in data.COLLATOR_REGISTRY
    assert "GradDiff" in trainer.TRAINER_REGISTRY  # OU's own entries untouched


def test_name_clash_is_refused_without_partial_registration(ou_imported, monkeypatch) -> None:
    trainer, data = sys.modules["trainer"], sys.modules["data"]

    class DUET:  # somebody else's "DUET"
        pass

    monkeypatch.setitem(trainer.TRAINER_REGISTRY, "DUET", DUET)
    monkeypatch.delitem(data.COLLATOR_REGISTRY, "DUETCollator")
    with pytest.raises(RegistrationError, match="already has 'DUET'"):
        register()
    assert trainer.TRAINER_REGISTRY["DUET"] is DUET
    assert "DUETCollator" not in data.COLLATOR_REGISTRY  # nothing registered before the refusal


@pytest.mark.parametrize("style", ["chat", "manual"])
def test_student_prompt_matches_ou_generation_prompt(ou_imported, tokenizer, chat_args, manual_args, style) -> None:
    from data.utils import preprocess_chat_instance

    template_args = {**chat_args, "date_string": "10 Apr 2025"} if style == "chat" else manual_args
    question = "Where was the author Gideon Kilbride born?"
    ou = preprocess_chat_instance(
        tokenizer, template_args, [question], ["Port Elsa."], max_length=512, predict_with_generate=True
    )
    assert PromptRenderer(tokenizer, template_args).prompt_ids(question) == ou["input_ids"].tolist()
