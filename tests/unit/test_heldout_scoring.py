"""duet_plugin/openunlearning/metrics/heldout.py: which rows are one concept, and which per-item field a child's
aggregate averages (no OU needed: plain lists and result dicts)."""

from __future__ import annotations

import pytest

from duet_plugin.openunlearning.metrics.heldout import check_partition, concept_labels, index_field, subset_mean


def test_blocks_of_concept_size_rows_are_one_concept_and_one_concept_is_refused_with_the_fix() -> None:
    assert concept_labels(list(range(10)), None, 5) == ["/0"] * 5 + ["/1"] * 5
    with pytest.raises(ValueError, match=r"10 rows make 1 concept.*concept_size=20.*partition_by=question"):
        concept_labels(list(range(10)), None, 20)  # TOFU's 20 questions per author, on a 10-question split


def test_the_field_whose_mean_is_the_aggregate_scores_a_subset() -> None:
    result = {"agg_value": 0.5, "value_by_index": {"0": {"rougeL_f1": 1.0, "rougeL_recall": 0.2}, "1": {
        "rougeL_f1": 0.0, "rougeL_recall": 0.2}}}  # fmt: skip
    assert index_field("forget_Q_A_ROUGE", result) == "rougeL_f1"
    assert subset_mean(result["value_by_index"], "rougeL_f1", [0]) == 1.0
    with pytest.raises(ValueError, match="no per-item field"):
        index_field("forget_quality", {"agg_value": 0.3, "value_by_index": {"0": {"pvalue": 1.0}}})


def test_partition_options_are_checked_before_any_compute() -> None:
    with pytest.raises(ValueError, match="partition_by='author'"):
        check_partition("m", {"partition_by": "author", "heldout_fraction": 0.5})
    with pytest.raises(ValueError, match=r"heldout_fraction must be in \(0, 1\)"):
        check_partition("m", {"partition_by": "concept", "heldout_fraction": 1.0})
