"""The learned prompt-injection detector that runs beside the rules (:mod:`ray_app.audit.injection`).

    prism eval injection --json --write-detector     # trains both kinds, measures them, writes the chosen one

A text is split into views (the whole text normalised as the rules see it, each sentence, and any base64
inside it decoded), every view is embedded with MiniLM (the same embedder retrieval uses), and the text's
score is its highest view score, so one planted sentence in a long passage is not averaged away. Two kinds
are trained offline on the injection suite's training split (``datasets/injection``) plus wiki summaries
as benign text, and measured on its test split by ``prism eval injection``:

- ``logreg``: a logistic regression on the 384-d vectors (scikit-learn, class-balanced);
- ``similarity``: the highest cosine to a known attack from the training split.

Each threshold is set on the training texts alone (the lowest that keeps the benign training texts'
false-positive rate at or under :data:`MAX_TRAIN_FPR`). The chosen detector's parameters ship as
``injection_detector.json`` next to this module; nothing is trained at serving time.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ray_app.audit.injection import decoded_base64, normalise_for_rules

log = logging.getLogger(__name__)

DETECTOR_FILE = Path(__file__).with_name("injection_detector.json")
MAX_TRAIN_FPR = 0.005
VIEW_CHARS = 600  # MiniLM reads ~256 word pieces; longer views are cut
MIN_SENTENCE_CHARS = 12
MAX_VIEWS = 16
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def text_views(text: str | None) -> list[str]:
    """What the detector embeds for one text: the normalised whole, its sentences, decoded base64 (each once)."""
    plain = normalise_for_rules(text)
    if not plain:
        return []
    views = [plain[:VIEW_CHARS]]
    sentences = [s for s in _SENTENCE_END.split(plain) if len(s) >= MIN_SENTENCE_CHARS]
    if len(sentences) > 1:
        views += [s[:VIEW_CHARS] for s in sentences]
    views += [normalise_for_rules(d)[:VIEW_CHARS] for d in decoded_base64(plain)]
    return list(dict.fromkeys(views))[:MAX_VIEWS]


@dataclass
class DetectorParams:
    """A trained detector: ``method`` (``logreg`` or ``similarity``), its weights and its threshold."""

    method: str
    threshold: float
    coef: list[float] | None = None  # logreg
    intercept: float = 0.0  # logreg
    exemplars: list[list[float]] | None = None  # similarity: unit vectors of known attacks
    trained_on: dict | None = None  # what it was trained on (counts, embedder)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def score_vectors(params: DetectorParams, vectors: np.ndarray) -> np.ndarray:
    """Per-vector scores: a probability (``logreg``) or the highest cosine to an attack (``similarity``)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if params.method == "logreg":
        logits = vectors @ np.asarray(params.coef, dtype=np.float32) + params.intercept
        return 1.0 / (1.0 + np.exp(-logits))
    exemplars = np.asarray(params.exemplars, dtype=np.float32)
    return (vectors @ exemplars.T).max(axis=1)


class InjectionDetector:
    """Scores texts with trained :class:`DetectorParams` over an embedder (``embed(texts) -> unit vectors``)."""

    def __init__(self, embedder, params: DetectorParams):
        self.embedder, self.params = embedder, params

    @property
    def method(self) -> str:
        return self.params.method

    def scores(self, texts: list[str]) -> list[float]:
        """Each text's highest view score (0.0 for an empty text); all views go through the embedder at once."""
        views = [text_views(t) for t in texts]
        flat = [v for vs in views for v in vs]
        if not flat:
            return [0.0] * len(texts)
        per_view = score_vectors(self.params, self.embedder.embed(flat))
        out, i = [], 0
        for vs in views:
            out.append(float(per_view[i:i + len(vs)].max()) if vs else 0.0)
            i += len(vs)
        return out

    def flag(self, texts: list[str]) -> list[bool]:
        return [s >= self.params.threshold for s in self.scores(texts)]


def load_params(path: Path = DETECTOR_FILE) -> DetectorParams | None:
    if not path.exists():
        return None
    return DetectorParams(**json.loads(path.read_text()))


def load_detector(embedder=None, path: Path = DETECTOR_FILE) -> InjectionDetector | None:
    """The shipped detector over ``embedder`` (default: the process's MiniLM); None (rules only, logged) when
    its parameters are missing."""
    params = load_params(path)
    if params is None:
        log.warning("no injection detector at %s: the rules screen alone (run prism eval injection --write-detector)",
                    path)
        return None
    if embedder is None:
        from ray_app.models.text import get_text_embedder

        embedder = get_text_embedder()
    return InjectionDetector(embedder, params)


# ---------------------------------------------------------------- training (offline)


def threshold_at_fpr(benign_scores: np.ndarray, max_fpr: float = MAX_TRAIN_FPR) -> float:
    """The lowest threshold that flags at most ``max_fpr`` of ``benign_scores`` (a hair above the cut)."""
    ranked = np.sort(np.asarray(benign_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(max_fpr * len(ranked)))
    return float(ranked[allowed] + 1e-6) if len(ranked) > allowed else 0.0


def fit_logreg(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=4.0, class_weight="balanced", max_iter=2000, random_state=seed)
    model.fit(x, y)
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])


def train_detector(method: str, embedder, attacks: list[str], benign: list[str], seed: int = 0) -> DetectorParams:
    """Train one detector kind on attack and benign texts; its threshold comes from the benign texts' scores.

    ``logreg`` learns from every view (an attack's views are positives only where the whole text is one:
    its sentences may be harmless on their own); ``similarity`` keeps the attacks' whole-text vectors.
    """
    attack_vecs = embedder.embed([normalise_for_rules(t)[:VIEW_CHARS] for t in attacks])
    benign_views = [text_views(t) for t in benign]
    benign_vecs = embedder.embed([v for vs in benign_views for v in vs])
    if method == "logreg":
        x = np.vstack([attack_vecs, benign_vecs])
        y = np.r_[np.ones(len(attack_vecs)), np.zeros(len(benign_vecs))]
        coef, intercept = fit_logreg(x, y, seed)
        params = DetectorParams("logreg", 0.0, coef=[round(float(c), 6) for c in coef], intercept=round(intercept, 6))
    elif method == "similarity":
        params = DetectorParams("similarity", 0.0, exemplars=[[round(float(c), 5) for c in v] for v in attack_vecs])
    else:
        raise ValueError(f"unknown detector method {method!r}")
    per_view = score_vectors(params, benign_vecs)
    per_text, i = [], 0
    for vs in benign_views:
        per_text.append(per_view[i:i + len(vs)].max() if vs else 0.0)
        i += len(vs)
    params.threshold = round(threshold_at_fpr(np.array(per_text)), 6)
    params.trained_on = {"attacks": len(attacks), "benign": len(benign), "benign_views": len(benign_vecs)}
    return params


def write_params(params: DetectorParams, path: Path = DETECTOR_FILE) -> Path:
    path.write_text(json.dumps(params.to_json()) + "\n")
    return path
