"""Fairness metrics per group with fairlearn's ``MetricFrame``: rates by group, their difference and ratio.

    fairness_by_group(rows, {"gender": [...]}, {"grounded_answer_rate": ("grounded", None)})

Each metric is ``(numerator field, denominator field or None)``: None gives the share of rows where the field is
true (a rate); a denominator field gives the ratio of sums (e.g. supported sentences / checked sentences).
"""

from __future__ import annotations

NOT_A_PERSON = "not a person"


def _ratio_of_sums(y_true, y_pred) -> float:
    total = float(sum(y_pred))
    return float(sum(y_true)) / total if total else float("nan")


def _clean(value):
    """A JSON-safe float (NaN -> None), rounded."""
    value = float(value)
    return None if value != value else round(value, 4)


def fairness_by_group(rows: list[dict], features: dict[str, list[str]], metrics: dict[str, tuple[str, str | None]],
                      min_group: int = 1) -> dict:
    """``{feature: {"groups": {group: n}, metric: {"overall", "by_group", "difference", "ratio"}}}``.

    Args:
        rows: one dict per item (an answer), holding the metric fields.
        features: per sensitive feature, one group label per row.
        metrics: name -> (numerator field, denominator field or None), see the module docstring.
        min_group: groups with fewer rows are left out of the frame (their rates would be noise).
    """
    import pandas as pd
    from fairlearn.metrics import MetricFrame

    out: dict = {}
    for feature, labels in features.items():
        counts = pd.Series(labels).value_counts()
        keep = [i for i, label in enumerate(labels) if counts[label] >= min_group]
        block: dict = {"groups": {str(k): int(v) for k, v in counts.items() if v >= min_group}}
        if not keep:
            out[feature] = block
            continue
        for name, (numerator, denominator) in metrics.items():
            y_true = [float(rows[i][numerator]) for i in keep]
            y_pred = [float(rows[i][denominator]) if denominator else 1.0 for i in keep]
            frame = MetricFrame(metrics=_ratio_of_sums, y_true=y_true, y_pred=y_pred,
                                sensitive_features=pd.Series([labels[i] for i in keep], name=feature))
            block[name] = {"overall": _clean(frame.overall),
                           "by_group": {str(g): _clean(v) for g, v in frame.by_group.items()},
                           "difference": _clean(frame.difference(method="between_groups")),
                           "ratio": _clean(frame.ratio(method="between_groups"))}
        out[feature] = block
    return out


ANSWER_METRICS = {
    "grounding_rate": ("supported_sentences", "sentences"),
    "grounded_answer_rate": ("grounded_answer", None),
    "citation_rate": ("cites", None),
    "refusal_rate": ("refused", None),
}


def answer_features(examples: list[dict]) -> dict[str, list[str]]:
    """Sensitive features of held-out questions: the annotated gender, region and era of the article's subject
    when it is a biography (``not a person`` otherwise), and the question's kind."""
    from ray_app.bias.annotate import ATTRIBUTES, load_biographies

    try:
        people = {b["title"]: b["attributes"] for b in load_biographies()}
    except FileNotFoundError:  # the wiki package is absent: no person is known
        people = {}
    features = {f"subject_{name}": [getattr(people[e["article"]], name) if e.get("article") in people
                                    else NOT_A_PERSON for e in examples] for name in ATTRIBUTES}
    features["kind"] = [e["kind"] for e in examples]
    return features


def answers_fairness(examples: list[dict], scores: list[dict], min_group: int = 5) -> dict:
    """MetricFrame rates per group of one method's answers to the answerable held-out questions
    (:mod:`ray_app.evaluation.answers` scores; grounding, grounded answers, citations, refusals)."""
    keep = [i for i, s in enumerate(scores) if s["answerable"]]
    rows = [dict(scores[i], grounded_answer=bool(scores[i]["grounded"]) and not scores[i]["refused"]) for i in keep]
    features = {name: [labels[i] for i in keep] for name, labels in answer_features(examples).items()}
    return fairness_by_group(rows, features, ANSWER_METRICS, min_group)
