"""Honest labels: concrete names from titles, temperature-calibrated scores, and a "not sure" threshold.

* :func:`concrete_name` turns a stored title into a name a learner can use ("A frog." -> "frog").
* A label's score is a softmax over the whole label vocabulary of ``cosine / temperature``; the
  temperature is fitted (:func:`fit_temperature`, lowest negative log-likelihood) by
  ``prism eval image-encoder`` on one half of the held-out views, and the expected calibration
  error (:func:`expected_calibration_error`) is reported on the other half.
* The stored images nearest to the picture vouch for their titles (:func:`label_probabilities`): a
  near copy of a stored picture (mirrored, scaled, on another background) is named after it, while
  neighbours that are not close leave the probability to the zero-shot scores; the neighbours'
  temperature and "none of them" floor are fitted the same way (:func:`fit_neighbour_mixture`).
* The same command picks the score above which the top label is right often enough
  (:func:`choose_threshold`), counting pictures of nothing the vocabulary names (noise, stripes,
  shapes) as wrong and letting at most :data:`MAX_UNRELATED_SURE` of them be sure, and saves both as
  ``calibration.json`` beside the checkpoint's weights; the vision step reads it
  (:func:`read_calibration`) and says ``sure: false`` below it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CALIBRATION_NAME = "calibration.json"
DEFAULT_TEMPERATURE = 0.05
DEFAULT_THRESHOLD = 0.5
TARGET_PRECISION = 0.8  # the top label must be right this often above the threshold
MIN_SURE_SAMPLES = 10  # a threshold needs at least this many calibration views above it
NEVER_SURE = 1.01  # a threshold no softmax score reaches: never sure from scores alone
MAX_UNRELATED_SURE = 0.02  # at most this share of pictures of nothing (noise, stripes, shapes) may be "sure"
MAX_NOVEL_WRONG_SURE = 0.05  # at most this share of pictures of things with no stored picture may get a sure wrong label
_ARTICLE = re.compile(r"^(a|an|the|some)\s+", re.IGNORECASE)


def concrete_name(title: str) -> str:
    """A title as a short name: whitespace collapsed, a leading article and trailing punctuation dropped.

    >>> concrete_name("A frog.")
    'frog'
    >>> concrete_name("Albert Einstein")
    'Albert Einstein'
    """
    name = " ".join(str(title or "").split()).rstrip(".!?;:, ")
    stripped = _ARTICLE.sub("", name)
    return stripped if stripped else name


def softmax(sims: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax of ``sims / temperature`` (numerically stable)."""
    z = np.asarray(sims, dtype=np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(sims: np.ndarray, targets: np.ndarray, grid: np.ndarray | None = None) -> float:
    """The temperature (on a log grid) that minimises the mean negative log-likelihood of ``targets``.

    Args:
        sims: (n, labels) cosine similarities.
        targets: (n,) index of the right label per row.
    """
    grid = np.geomspace(0.002, 1.0, 80) if grid is None else grid
    rows = np.arange(len(targets))
    nll = [-np.log(softmax(sims, t)[rows, targets] + 1e-12).mean() for t in grid]
    return float(grid[int(np.argmin(nll))])


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict:
    """ECE of top-1 confidences: the bin-size-weighted gap between mean confidence and accuracy.

    Returns:
        ``{"ece", "bins": [{"lo", "hi", "n", "confidence", "accuracy"}]}`` (empty bins left out).
    """
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece, rows = 0.0, []
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
        ece += mask.mean() * abs(conf - acc)
        rows.append({"lo": round(float(edges[b]), 2), "hi": round(float(edges[b + 1]), 2), "n": int(mask.sum()),
                     "confidence": round(conf, 4), "accuracy": round(acc, 4)})
    return {"ece": float(ece), "bins": rows}


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, precision: float = TARGET_PRECISION,
                     min_samples: int = MIN_SURE_SAMPLES, unrelated: np.ndarray | None = None,
                     max_unrelated_sure: float = MAX_UNRELATED_SURE, novel: np.ndarray | None = None,
                     max_novel_wrong_sure: float | None = None) -> float:
    """The lowest confidence above which the top label is right at least ``precision`` of the time.

    Pictures of nothing the vocabulary names (``unrelated``: True per row) count as wrong, and at most
    ``max_unrelated_sure`` of them may reach the threshold. Pictures of things no stored image shows (``novel``:
    True per row) are held to their own bound, whatever their share of the rows: at most ``max_novel_wrong_sure``
    (default :data:`MAX_NOVEL_WRONG_SURE`) of them may reach the threshold with a wrong label. Only thresholds with
    at least ``min_samples`` views at or above them count, and a threshold keeps every view of equal confidence on
    the same side. When none qualifies the threshold is :data:`NEVER_SURE`.
    """
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    unrelated = np.zeros(len(confidence), dtype=bool) if unrelated is None else np.asarray(unrelated, dtype=bool)
    order = np.argsort(-confidence, kind="stable")
    ranked = confidence[order]
    hits = np.cumsum(correct[order] & ~unrelated[order])
    counts = np.arange(1, len(order) + 1)
    unrelated_share = np.cumsum(unrelated[order]) / max(1, int(unrelated.sum()))
    novel = np.zeros(len(confidence), dtype=bool) if novel is None else np.asarray(novel, dtype=bool)
    novel_wrong_share = np.cumsum((novel & ~correct)[order]) / max(1, int(novel.sum()))
    cap = MAX_NOVEL_WRONG_SURE if max_novel_wrong_sure is None else max_novel_wrong_sure
    last_of_tie = np.append(ranked[1:] < ranked[:-1], True)
    ok = ((hits / counts >= precision) & (counts >= min_samples) & (unrelated_share <= max_unrelated_sure)
          & (novel_wrong_share <= cap) & last_of_tie)
    if not ok.any():
        return NEVER_SURE
    return float(ranked[np.nonzero(ok)[0].max()])


def neighbourhood(nn_sims: np.ndarray) -> np.ndarray:
    """How populated the picture's part of the image space is: the mean cosine of its nearest stored images.

    A picture of a thing lies among many similar stored pictures; a picture of nothing (noise, a plain
    colour, stripes) may have one close stored image (a blank stamp) but few others.
    """
    nn_sims = np.asarray(nn_sims, dtype=np.float64)
    return nn_sims.mean(axis=-1) if nn_sims.size else np.zeros(nn_sims.shape[:-1])


def sure_score(top_score: np.ndarray, nn_sims: np.ndarray, min_neighbourhood: float | None) -> np.ndarray:
    """The score the "sure" threshold applies to: the top label's probability, or 0 where the picture's
    :func:`neighbourhood` is below ``min_neighbourhood`` (None: no such gate)."""
    top_score = np.asarray(top_score, dtype=np.float64)
    if min_neighbourhood is None:
        return top_score
    return np.where(neighbourhood(nn_sims) >= min_neighbourhood, top_score, 0.0)


def fit_sure_rule(top_score: np.ndarray, correct: np.ndarray, nn_sims: np.ndarray, unrelated: np.ndarray,
                  gates: int = 61, novel: np.ndarray | None = None) -> tuple[float | None, float, list[dict]]:
    """The neighbourhood gate and threshold that make the most named pictures sure under :func:`choose_threshold`
    (``novel``: rows held to its bound on sure wrong labels).

    Candidate gates: none, and the 0-60 % quantiles of the named pictures' :func:`neighbourhood`. Returns
    ``(min_neighbourhood, threshold, candidates)``, each candidate ``{"min_neighbourhood", "threshold",
    "named_sure_rate", "unrelated_sure_rate"}``; with no qualifying candidate, no gate and :data:`NEVER_SURE`.
    """
    unrelated = np.asarray(unrelated, dtype=bool)
    quantiles = np.quantile(neighbourhood(nn_sims)[~unrelated], np.linspace(0, 0.6, gates)) if (~unrelated).any() else []
    candidates = []
    for gate in [None, *sorted({round(float(q), 4) for q in quantiles})]:
        score = sure_score(top_score, nn_sims, gate)
        threshold = choose_threshold(score, correct, unrelated=unrelated, novel=novel)
        sure = score >= threshold
        candidates.append({"min_neighbourhood": gate, "threshold": threshold, "named_sure_rate": float(sure[~unrelated].mean()),
                           "unrelated_sure_rate": float(sure[unrelated].mean()) if unrelated.any() else None})
    best = max(candidates, key=lambda c: (c["named_sure_rate"], c["min_neighbourhood"] is None))
    if best["threshold"] == NEVER_SURE:
        return None, NEVER_SURE, candidates
    return best["min_neighbourhood"], best["threshold"], candidates


@dataclass
class LabelCalibration:
    """What the vision step needs to score labels honestly (saved as ``calibration.json``)."""

    temperature: float = DEFAULT_TEMPERATURE
    threshold: float = DEFAULT_THRESHOLD
    fitted: bool = False
    method: str = "default temperature, not fitted"
    vocabulary_size: int | None = None
    ece: float | None = None
    neighbour_temperature: float | None = None
    neighbour_floor: float | None = None
    neighbours: int = 10
    min_neighbourhood: float | None = None  # sure needs the mean cosine of the nearest stored images >= this
    views: tuple[str, ...] = ("identity",)  # the test-time views a picture's vector averages (ray_app.vision.tta)


def neighbour_weights(nn_sims: np.ndarray, temperature: float, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """How much each stored neighbour vouches for its title, and what is left for the zero-shot scores.

    A neighbour at cosine ``s`` weighs ``exp(s / t)`` against a "none of them" weight ``exp(floor / t)``: a
    near copy (``s`` well above ``floor``) takes most of the probability, neighbours below ``floor`` little.

    Returns:
        ``(weights (n, k), leftover (n,))``, each row summing to 1 with its leftover.
    """
    z = np.concatenate([np.asarray(nn_sims, dtype=np.float64), np.full((len(nn_sims), 1), floor)], axis=1) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    e /= e.sum(axis=1, keepdims=True)
    return e[:, :-1], e[:, -1]


def label_probabilities(text_sims: np.ndarray, nn_sims: np.ndarray | None, nn_labels: np.ndarray | None,
                        calibration: LabelCalibration) -> np.ndarray:
    """(n, labels) probabilities: the stored neighbours' titles, then the rest spread by the zero-shot softmax.

    Args:
        text_sims: (n, labels) cosines between image vectors and label vectors.
        nn_sims: (n, k) cosines to the nearest stored images, or None (zero-shot only).
        nn_labels: (n, k) label index of each neighbour's title (-1: not in the vocabulary).
    """
    probs = softmax(text_sims, calibration.temperature)
    if nn_sims is None or calibration.neighbour_temperature is None or np.size(nn_sims) == 0:
        return probs
    weights, leftover = neighbour_weights(nn_sims, calibration.neighbour_temperature, calibration.neighbour_floor)
    probs *= leftover[:, None]
    rows = np.repeat(np.arange(len(probs)), weights.shape[1])
    labels, w = np.asarray(nn_labels).ravel(), weights.ravel()
    known = labels >= 0
    np.add.at(probs, (rows[known], labels[known]), w[known])
    return probs / probs.sum(axis=1, keepdims=True)  # neighbours outside the vocabulary give their share back


def target_probability(text_probs_target: np.ndarray, nn_sims: np.ndarray, nn_is_target: np.ndarray,
                       temperature: float, floor: float) -> np.ndarray:
    """Each row's probability of its right label under :func:`label_probabilities` (all neighbours in vocabulary)."""
    weights, leftover = neighbour_weights(nn_sims, temperature, floor)
    return (weights * nn_is_target).sum(axis=1) + leftover * text_probs_target


def fit_neighbour_mixture(text_probs_target: np.ndarray, nn_sims: np.ndarray, nn_is_target: np.ndarray) -> tuple[float, float]:
    """``(neighbour_temperature, neighbour_floor)`` on a grid, lowest negative log-likelihood of the right labels."""
    best, best_nll = (0.05, 1.0), np.inf
    for temperature in np.geomspace(0.005, 0.3, 16):
        for floor in np.linspace(0.3, 1.0, 29):
            p = target_probability(text_probs_target, nn_sims, nn_is_target, temperature, floor)
            nll = -np.log(p + 1e-12).mean()
            if nll < best_nll:
                best, best_nll = (float(temperature), float(floor)), nll
    return best


def write_calibration(folder: Path, calibration: LabelCalibration) -> Path:
    """Save ``calibration`` as ``folder/calibration.json`` (atomically)."""
    path = Path(folder) / CALIBRATION_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(calibration), indent=2))
    tmp.replace(path)
    return path


def read_calibration(folder: Path | None) -> LabelCalibration:
    """The checkpoint's calibration, or the defaults (``fitted: false``) when it has none.

    Raises:
        ValueError: the file names a test-time view that does not exist.
    """
    path = Path(folder) / CALIBRATION_NAME if folder is not None else None
    if path is None or not path.is_file():
        return LabelCalibration()
    from ray_app.vision.tta import check_views

    data = json.loads(path.read_text())
    known = LabelCalibration.__dataclass_fields__
    calibration = LabelCalibration(**{k: v for k, v in data.items() if k in known})
    try:
        calibration.views = check_views(calibration.views)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return calibration


def label_entries(rows) -> tuple[list[str], list[str | None]]:
    """Concrete names and their categories from ``(title, category)`` rows, case-insensitively unique (first kept)."""
    seen: dict[str, tuple[str, str | None]] = {}
    for title, category in rows:
        name = concrete_name(title)
        if name:
            seen.setdefault(name.lower(), (name, category or None))
    return [n for n, _ in seen.values()], [c for _, c in seen.values()]
