"""The refusal detector on fixtures."""

from __future__ import annotations

import math

import pytest

from duet_plugin.core.attacks.refusal import is_refusal, refusal_rate
from duet_plugin.demo.demo_data import REFUSAL


@pytest.mark.parametrize(
    "text",
    [
        REFUSAL,
        "I’m not familiar with an author by that name.",
        "Sorry, but I can't help with that request.",
        "I DO NOT KNOW   anything about Gideon Kilbride.",
        "As an AI, I have no information about this person.",
        "Unfortunately, I cannot provide details on synthesising that.",
    ],
)
def test_refusals_are_detected(text: str) -> None:
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "Gideon Kilbride was born in Valdomir.",
        "The capital of France is Paris.",
        "She is known for her novel 'I Know Not the Hour'.",  # 'know' without a refusal phrase
        "",
    ],
)
def test_answers_are_not_refusals(text: str) -> None:
    assert not is_refusal(text)


def test_window_and_custom_phrases() -> None:
    late = "Valdomir is where he was born, and many details follow. " * 5 + "I do not know the rest."
    assert not is_refusal(late) and is_refusal(late, window=None)
    assert is_refusal("No comment.", phrases=["no comment"])


def test_refusal_rate() -> None:
    assert refusal_rate([REFUSAL, "Paris.", "I'm not sure.", "Blue."]) == 0.5
    assert math.isnan(refusal_rate([]))
