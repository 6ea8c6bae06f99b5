"""fairlearn MetricFrame rates per group: the shape `prism eval answers` reports, on small constructed data."""

import pytest

from ray_app.bias.fairness import NOT_A_PERSON, answers_fairness, fairness_by_group


def test_rates_by_group_difference_and_ratio():
    rows = [{"ok": 1}, {"ok": 1}, {"ok": 0}, {"ok": 1}, {"ok": 0}, {"ok": 0}]
    result = fairness_by_group(rows, {"g": ["a", "a", "a", "b", "b", "b"]}, {"ok_rate": ("ok", None)})
    block = result["g"]
    assert block["groups"] == {"a": 3, "b": 3}
    assert block["ok_rate"]["by_group"] == {"a": pytest.approx(0.6667, abs=1e-4), "b": pytest.approx(0.3333, abs=1e-4)}
    assert block["ok_rate"]["overall"] == 0.5
    assert block["ok_rate"]["difference"] == pytest.approx(0.3333, abs=1e-4)
    assert block["ok_rate"]["ratio"] == 0.5


def test_ratio_of_sums_and_small_groups_left_out():
    rows = [{"s": 1, "n": 2}, {"s": 2, "n": 2}, {"s": 0, "n": 1}]
    result = fairness_by_group(rows, {"g": ["a", "a", "b"]}, {"rate": ("s", "n")}, min_group=2)
    assert result["g"]["groups"] == {"a": 2}
    assert result["g"]["rate"]["by_group"] == {"a": 0.75}


def score(i: int, grounded: bool, answerable: bool = True) -> dict:
    return {"id": f"q{i}", "answerable": answerable, "grounded": grounded, "refused": False, "cites": grounded,
            "sentences": 2, "supported_sentences": 2 if grounded else 0}


def test_answers_fairness_groups_questions_by_their_subject():
    # Frida Kahlo and Jane Austen are wiki biographies (women); Paris is not a person.
    examples = [{"id": f"q{i}", "kind": "who_was", "article": title}
                for i, title in enumerate(["Frida Kahlo"] * 5 + ["Jane Austen"] * 5 + ["Paris"] * 6)]
    scores = [score(i, grounded=i < 10) for i in range(15)] + [score(15, False, answerable=False)]
    result = answers_fairness(examples, scores)
    gender = result["subject_gender"]
    assert gender["groups"] == {"female": 10, NOT_A_PERSON: 5}  # the unanswerable question is left out
    for metric in ("grounding_rate", "grounded_answer_rate", "citation_rate", "refusal_rate"):
        assert set(gender[metric]) == {"overall", "by_group", "difference", "ratio"}
    assert gender["grounded_answer_rate"]["by_group"] == {"female": 1.0, NOT_A_PERSON: 0.0}
    assert gender["grounded_answer_rate"]["difference"] == 1.0
    assert result["subject_region"]["groups"] == {"Europe": 5, "Latin America": 5, NOT_A_PERSON: 5}
    assert result["kind"]["groups"] == {"who_was": 15}
