"""What the teacher is told to forget when the config gives no concepts: derived from raw news text (a few salient
subjects, or an error naming prefix.concepts), and from question/answer data (the forget authors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from duet_plugin.core.options import OptionError
from duet_plugin.core.query_builders import records_from_text
from duet_plugin.core.teacher import concepts_from_records, derive_text_concepts, name_runs
from duet_plugin.core.unified import records_from_qa

DATA = Path(__file__).parents[1] / "data"
SUBJECTS = ["Joe Biden", "Storm Ciarán", "Marguerite Ashdown-Kerr"]
#: What derivation returned on this data before it told subjects from the names all news repeats.
NOISE = {"Home Office", "Washington DC", "Christmas Eve", "Downing Street", "Met Office", "White House", "Biden"}


def _articles(name: str) -> list[str]:
    """tests/data/news_*.txt: BBC-style articles separated by blank lines (bylines and footers included)."""
    return [a for a in (DATA / name).read_text(encoding="utf-8").split("\n\n") if a.strip()]


def _records(texts: list[str], stream: str, template: str = "continuation") -> list:
    return records_from_text(texts, stream=stream, template=template, max_records=400)  # as the MUSE datasets do


@pytest.mark.parametrize("template", ["continuation", "cloze", "question"])
def test_news_forget_text_gives_its_few_subjects(template: str) -> None:
    forget = _records(_articles("news_forget.txt"), "forget", template)
    retain = _records(_articles("news_retain.txt"), "retain", template)
    concepts = concepts_from_records(forget, retain)
    assert concepts == SUBJECTS
    assert not NOISE & set(concepts)


def test_candidates_show_why_the_noise_is_left_out() -> None:
    forget = [f"{r.prompt} {r.response}" for r in _records(_articles("news_forget.txt"), "forget")]
    retain = [f"{r.prompt} {r.response}" for r in _records(_articles("news_retain.txt"), "retain")]
    concepts, candidates = derive_text_concepts(forget, retain)
    assert concepts == SUBJECTS
    by_name = {c.name: c for c in candidates}
    assert by_name["Joe Biden"].retain == 0 and by_name["Joe Biden"].forget >= 10  # "Mr Biden's" counts for him
    assert by_name["Met Office"].lift < 1  # in the storm stories, and as often in the retain weather news
    assert "Christmas Eve" not in by_name and "Washington Joe Biden" not in by_name


def test_news_without_salient_subjects_stops_and_names_the_fix() -> None:
    """Forget and retain drawn from the same news (as MUSE-News's are): no name stands out."""
    news = _articles("news_retain.txt")
    forget, retain = _records(news[0::2], "forget"), _records(news[1::2], "retain")
    with pytest.raises(OptionError) as err:
        concepts_from_records(forget, retain)
    assert err.value.option == "prefix.concepts"
    message = str(err.value.under("trainer.method_args."))
    assert message.startswith("trainer.method_args.prefix.concepts is not set")
    assert "Set it to what the teacher should forget, a list such as" in message  # the fix
    assert "Top candidates: 'Rishi Sunak' (" in message  # what it found, to choose from


def test_raw_text_without_retain_text_stops() -> None:
    with pytest.raises(OptionError, match="no retain text to compare with"):
        concepts_from_records(_records(_articles("news_forget.txt"), "forget"), [])


def test_concept_tags_win_over_derivation() -> None:
    records = [{"prompt": "Continue the following text: Storm Ciarán", "source": "text", "concept": "storms"}]
    assert concepts_from_records(records) == ["storms"]


def test_tofu_style_qa_records_still_give_exactly_the_authors() -> None:
    rows = {s: json.loads((DATA / f"tofu_style_{s}.json").read_text()) for s in ("forget", "retain")}
    forget = records_from_qa(rows["forget"], stream="forget", source="qa")
    retain = records_from_qa(rows["retain"], stream="retain", source="qa")
    assert concepts_from_records(forget, retain) == ["Adaeze Nkemdirim Okafor", "Mikhail Ostrovsky-Lund"]


@pytest.mark.parametrize(
    ("text", "runs"),
    [
        ("US President Joe Biden has arrived in Northern Ireland.", ["Joe Biden", "Northern Ireland"]),
        ("He was greeted by Prime Minister Rishi Sunak.", ["Rishi Sunak"]),
        ("Mr Biden's visit marks 25 years.", []),
        ("She spent Christmas Eve away from the city.", []),
        ("Follow BBC Devon on Facebook, X and Instagram.", ["BBC Devon"]),
        ("The Home Secretary, Suella Braverman, was sacked.", ["Suella Braverman"]),
        ("By Jonah Fisher, BBC News Storm Ciarán has brought winds.", ["Jonah Fisher", "BBC News Storm Ciarán"]),
    ],
)
def test_name_runs_in_news(text: str, runs: list[str]) -> None:
    assert name_runs(text)[0] == runs
