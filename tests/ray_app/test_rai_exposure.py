"""Fairness of exposure on toy rankings with known answers, and the exposure-aware re-ranking."""

import math

import pytest

from ray_app.bias.exposure import exposure_by_group, exposure_gap, position_weight, rerank_for_exposure
from ray_app.store.rows import SearchHit

GROUP = {"m1": "m", "m2": "m", "m3": "m", "f1": "f", "f2": "f", "f3": "f", "x": "unknown"}


def test_exposure_shares_and_ratios_on_a_toy_pool():
    # One query, pool of 2 m + 2 f; the ranking shows m1, m2 on top, f1 third, f2 beyond k.
    result = exposure_by_group([["m1", "m2", "f1", "other", "f2"]], [{"m1", "m2", "f1", "f2"}], GROUP.get, k=3)
    m = 1 / math.log2(2) + 1 / math.log2(3)
    f = 1 / math.log2(4)
    assert result["m"]["exposure_share"] == pytest.approx(m / (m + f), abs=1e-4)
    assert result["f"]["exposure_share"] == pytest.approx(f / (m + f), abs=1e-4)
    assert result["m"]["pool_share"] == result["f"]["pool_share"] == 0.5
    assert result["f"]["ratio"] == pytest.approx(2 * f / (m + f), abs=1e-3)
    assert result["m"]["ratio"] > 1 > result["f"]["ratio"]
    assert exposure_gap(result) == pytest.approx(abs(result["f"]["ratio"] - 1), abs=1e-3)


def test_equal_exposure_over_mirrored_queries_gives_ratio_one():
    rankings = [["m1", "f1"], ["f1", "m1"]]
    result = exposure_by_group(rankings, [{"m1", "f1"}, {"m1", "f1"}], GROUP.get, k=2)
    assert result["m"]["ratio"] == result["f"]["ratio"] == 1.0
    assert exposure_gap(result) == 0.0


def test_documents_outside_the_pool_get_no_exposure():
    result = exposure_by_group([["x", "m1"]], [{"m1", "f1"}], GROUP.get, k=2)
    assert result["m"]["exposure"] == pytest.approx(position_weight(2), abs=1e-4)
    assert result["f"]["exposure"] == 0 and result["f"]["ratio"] == 0.0


def hit(doc: str, score: float) -> SearchHit:
    return SearchHit("chunk", f"{doc}#0", doc, doc, "text", score)


def test_rerank_balances_people_and_leaves_other_documents_in_place():
    hits = [hit("m1", 1.0), hit("topic", 0.95), hit("m2", 0.9), hit("m3", 0.85), hit("f1", 0.5), hit("f2", 0.4)]
    order = [h.doc_id for h in rerank_for_exposure(hits, GROUP.get, k=4, weight=0.8)]
    assert order[1] == "topic"  # not a person: never moves
    assert "f1" in order[:4]  # a woman moves into the top 4
    assert sorted(order) == sorted(h.doc_id for h in hits)  # nothing lost or duplicated
    before = exposure_by_group([[h.doc_id for h in hits]], [set(GROUP) - {"x"}], GROUP.get, k=4)
    after = exposure_by_group([order], [set(GROUP) - {"x"}], GROUP.get, k=4)
    assert after["f"]["ratio"] > before["f"]["ratio"]


def test_rerank_with_weight_zero_or_no_people_changes_nothing():
    hits = [hit("m1", 1.0), hit("m2", 0.9), hit("f1", 0.2)]
    assert rerank_for_exposure(hits, GROUP.get, k=2, weight=0.0) == hits
    plain = [hit("a", 1.0), hit("b", 0.5)]
    assert rerank_for_exposure(plain, GROUP.get, k=2) == plain
