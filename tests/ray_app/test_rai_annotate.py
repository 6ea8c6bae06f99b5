"""The bias audit's annotation rules on small constructed texts, and the gold sample's shape."""

import json
from pathlib import Path

import pytest

from ray_app.bias.annotate import (
    ERAS,
    GOLD_PATH,
    UNKNOWN,
    annotate,
    annotation_error,
    era_of,
    first_year,
    wilson_interval,
)


def test_gender_follows_the_pronouns():
    assert annotate("A", "Scottish poet (1759–1796)", "A was a poet. He wrote songs. His songs are sung.").gender == "male"
    text = "B was a chemist. She discovered radium; her notebooks are still radioactive. He, her husband, helped."
    assert annotate("B", "Polish chemist", text).gender == "female"


def test_gender_without_pronouns_uses_gendered_nouns_and_groups_stay_unknown():
    assert annotate("Q", "Queen of Castile from 1474 to 1504", "Q ruled Castile.").gender == "female"
    assert annotate("K", "King of Aragon", "K ruled Aragon.").gender == "male"
    assert annotate("M", "American comedy team (1905–1949)", "The M brothers were comedians.").gender == UNKNOWN
    assert annotate("X", "American anthropologist", "X was an anthropologist.").gender == UNKNOWN


def test_region_is_the_first_nationality_or_place():
    assert annotate("", "German-American physicist", "").region == "Europe"
    assert annotate("", "African-American singer", "").region == "North America"
    assert annotate("", "South African writer", "").region == "Sub-Saharan Africa"
    assert annotate("", "King of France from 1643", "").region == "Europe"
    assert annotate("", "Sultan of the Ottoman Empire", "").region == "Middle East and North Africa"
    # nothing in the description: the summary's first sentences
    assert annotate("", "Founder of a dynasty", "Z was a Japanese shogun. He ruled.").region == \
        "East, Southeast and Central Asia"
    assert annotate("", "Poet", "Y wrote poems.").region == UNKNOWN


@pytest.mark.parametrize(("text", "year"), [
    ("Russian painter (1866–1944)", 1866), ("Mexican businessman (born 1940)", 1940),
    ("Persian ruler from 522 to 486 BCE", -522), ("5th-century BC Carthaginian explorer", -450),
    ("8th-century Persian revolutionary", 750), ("King from 95 to 55 BC", -95), ("Poet", None),
    ("Roman emperor from AD 37 to 41", 37), ("writer (AD23/24–79)", 23), ("historian (c. 37 – c. 100)", 37),
])
def test_first_year_reads_years_centuries_and_bc(text, year):
    assert first_year(text) == year


def test_era_bins():
    assert [era_of(y) for y in (-400, 499, 500, 1499, 1500, 1800, 1899, 1900, None)] == [
        ERAS[0], ERAS[0], ERAS[1], ERAS[1], ERAS[2], ERAS[3], ERAS[3], ERAS[4], UNKNOWN]


def test_annotation_error_counts_mistakes_per_attribute():
    from ray_app.bias.annotate import Attributes

    bios = [{"doc_id": "a", "attributes": Attributes("male", "Europe", ERAS[3], 1850, 3, 0, "french")},
            {"doc_id": "b", "attributes": Attributes(UNKNOWN, "Europe", ERAS[4], 1950, 0, 0, "french")}]
    gold = [{"doc_id": "a", "title": "A", "gender": "male", "region": "Europe", "era": ERAS[3]},
            {"doc_id": "b", "title": "B", "gender": "female", "region": "Europe", "era": ERAS[4]}]
    result = annotation_error(gold, bios)
    assert result["n"] == 2
    assert result["gender"]["errors"] == 1 and result["gender"]["error_rate"] == 0.5
    assert result["gender"]["rule_said_unknown"] == 1
    assert result["region"]["errors"] == 0 and result["era"]["errors"] == 0
    assert result["gender"]["mistakes"] == [{"title": "B", "rule": UNKNOWN, "gold": "female", "note": ""}]
    low, high = wilson_interval(1, 2)
    assert 0 < low < 0.5 < high < 1


def test_gold_fixture_has_at_least_100_hand_labels():
    rows = [json.loads(line) for line in Path(GOLD_PATH).read_text().splitlines() if line.strip()]
    assert len(rows) >= 100
    assert len({r["doc_id"] for r in rows}) == len(rows)
    assert all(r["era"] in ERAS and r["gender"] in ("male", "female", UNKNOWN) for r in rows)
