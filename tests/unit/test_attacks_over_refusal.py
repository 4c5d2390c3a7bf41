"""Over-refusal summary on fixture generations."""

from __future__ import annotations

import math

from duet_plugin.core.attacks.over_refusal import over_refusal_summary
from duet_plugin.demo.demo_data import REFUSAL


def test_rates_per_source_and_overall() -> None:
    out = over_refusal_summary(
        {
            "real_authors": [(REFUSAL, 0.0), ("Jane Austen wrote Emma.", 1.0), ("Tolstoy.", 0.4)],
            "world_facts": [("Paris.", 1.0)],
        }
    )
    assert out["agg_value"] == 0.25  # 1 refusal of 4 boundary questions
    ra = out["by_source"]["real_authors"]
    assert math.isclose(ra["refusal_rate"], 1 / 3) and math.isclose(ra["answer_match_rate"], 1 / 3) and ra["n"] == 3
    assert out["by_source"]["world_facts"] == {"refusal_rate": 0.0, "answer_match_rate": 1.0, "n": 1}


def test_missing_values_stay_missing() -> None:
    out = over_refusal_summary({"empty": [], "unscored": [("Paris.", None)]})
    assert math.isnan(out["by_source"]["empty"]["refusal_rate"])
    assert math.isnan(out["by_source"]["unscored"]["answer_match_rate"])
    assert out["agg_value"] == 0.0
    assert math.isnan(over_refusal_summary({})["agg_value"])


def test_threshold_and_phrases_are_configurable() -> None:
    items = {"s": [("No comment.", 0.3), ("Paris.", 0.6)]}
    assert over_refusal_summary(items)["agg_value"] == 0.0
    assert over_refusal_summary(items, phrases=["no comment"])["agg_value"] == 0.5
    assert over_refusal_summary(items, match_threshold=0.7)["by_source"]["s"]["answer_match_rate"] == 0.0
