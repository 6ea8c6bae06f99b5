"""Row types written to and read from the store, with the validation shared by every writer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_app.errors import InputError
from ray_app.settings import EMBED_DIM


class StoreInputError(InputError):
    """A row is malformed (wrong vector size, empty text, missing id); nothing was written."""


def stable_id(*parts: str) -> str:
    """Deterministic id from its parts (source + key), so re-ingesting upserts the same row."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def content_hash(*parts: str | None) -> str:
    """Hash of a document's content; a change means its chunks are replaced."""
    return hashlib.sha256("\x1f".join(p or "" for p in parts).encode()).hexdigest()


@dataclass
class DocumentRow:
    id: str
    source: str
    title: str
    content_hash: str
    n_chunks: int
    url: str | None = None
    license: str | None = None
    category: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChunkRow:
    doc_id: str
    ord: int
    text: str
    embedding: np.ndarray

    @property
    def id(self) -> str:
        return f"{self.doc_id}:{self.ord}"


@dataclass
class ImageRow:
    id: str
    doc_id: str | None
    caption: str | None
    path: str | None
    embedding: np.ndarray | None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass
class SearchHit:
    """One search result; ``kind`` is 'chunk' or 'image', ``text`` is the chunk text or image caption."""

    kind: str
    id: str
    doc_id: str | None
    title: str | None
    text: str | None
    score: float
    source: str | None = None
    category: str | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The public shape (`prism search --json`, ``/v1/search``): no server file paths."""
        return {"kind": self.kind, "id": self.id, "doc_id": self.doc_id, "title": self.title, "text": self.text,
                "score": self.score, "source": self.source, "category": self.category}


def check_vector(vector: Any, what: str) -> np.ndarray:
    """Return ``vector`` as float32 of EMBED_DIM finite values, or raise StoreInputError."""
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim != 1 or arr.shape[0] != EMBED_DIM:
        raise StoreInputError(f"{what}: embedding has shape {arr.shape}, expected ({EMBED_DIM},)")
    if not np.isfinite(arr).all():
        raise StoreInputError(f"{what}: embedding has NaN or infinite values")
    return arr


def validate_rows(documents: list[DocumentRow], chunks: list[ChunkRow], images: list[ImageRow]) -> None:
    """Check every row before any is written, so a bad row aborts the batch and writes nothing."""
    for doc in documents:
        if not doc.id or not doc.source:
            raise StoreInputError(f"document {doc.id!r}: id and source are required")
        if not (doc.title or "").strip():
            raise StoreInputError(f"document {doc.id!r}: title is empty")
        if doc.n_chunks < 0:
            raise StoreInputError(f"document {doc.id!r}: n_chunks is negative")
        json.dumps(doc.metadata)  # must be JSON-serialisable
    for chunk in chunks:
        if not chunk.doc_id or chunk.ord < 0:
            raise StoreInputError(f"chunk {chunk.id!r}: doc_id and a non-negative ord are required")
        if not (chunk.text or "").strip():
            raise StoreInputError(f"chunk {chunk.id!r}: text is empty")
        chunk.embedding = check_vector(chunk.embedding, f"chunk {chunk.id!r}")
    for image in images:
        if not image.id:
            raise StoreInputError("image: id is required")
        if image.embedding is not None:
            image.embedding = check_vector(image.embedding, f"image {image.id!r}")


def fuse_rrf(rankings: Sequence[Sequence[SearchHit]], k: int, rrf_k: int = 60,
             weights: Sequence[float] | None = None) -> list[SearchHit]:
    """Merge ranked lists by (weighted) reciprocal-rank fusion; keeps the first-seen hit per id."""
    scores: dict[str, float] = {}
    hits: dict[str, SearchHit] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings), strict=True):
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.id] = scores.get(hit.id, 0.0) + weight / (rrf_k + rank)
            hits.setdefault(hit.id, hit)
    order = sorted(scores, key=lambda i: (-scores[i], i))[:k]
    return [SearchHit(**{**hits[i].__dict__, "score": scores[i]}) for i in order]


def normalise_scores(scores: Sequence[float], how: str = "zscore") -> np.ndarray:
    """One list's scores on a common scale: ``zscore`` (mean 0, sd 1) or ``minmax`` (0..1); constant -> 0."""
    arr = np.asarray(scores, dtype=np.float64)
    if how not in ("zscore", "minmax"):
        raise ValueError(f"normalisation must be 'zscore' or 'minmax', got {how!r}")
    if arr.size == 0:
        return arr
    spread = arr.std() if how == "zscore" else arr.max() - arr.min()
    if spread <= 1e-12:
        return np.zeros_like(arr)
    return (arr - (arr.mean() if how == "zscore" else arr.min())) / spread


def fuse_convex(rankings: Sequence[Sequence[SearchHit]], k: int, weights: Sequence[float],
                norm: str = "zscore", floors: Sequence[float | None] | None = None,
                sharpness: float = 0.0) -> list[SearchHit]:
    """Merge scored lists by a weighted sum of per-list normalised scores (a convex combination when
    the weights sum to 1); keeps the first-seen hit per id.

    A hit missing from a list scores that list's ``floor`` there: a raw score known to bound every
    item the list left out (BM25's is 0, what a chunk without a query term scores), or, when None,
    the list's lowest score. A floor below the list's scores takes part in its normalisation, so a
    list of one hit still lifts that hit. An empty list adds nothing. Ties go to the smaller id.

    ``sharpness`` > 0 lets each query lean on the list that is sure of itself: list i's weight is
    multiplied by ``(1 + gap_i) ** sharpness``, where ``gap_i`` is how far (in normalised units) its best
    hit stands above its second, and the weights are scaled back to their sum (still convex).
    """
    scores: dict[str, float] = {}
    hits: dict[str, SearchHit] = {}
    for ranking in rankings:
        for hit in ranking:
            hits.setdefault(hit.id, hit)
            scores.setdefault(hit.id, 0.0)
    lists = [_normalised_list(ranking, floor, norm)
             for ranking, floor in zip(rankings, floors or [None] * len(rankings), strict=True)]
    weights = list(weights)
    if sharpness:
        scaled = [w * (1.0 + (lst[2] if lst else 0.0)) ** sharpness for w, lst in zip(weights, lists, strict=True)]
        weights = [w * sum(weights) / (sum(scaled) or 1.0) for w in scaled]
    for lst, weight in zip(lists, weights, strict=True):
        if lst is None:
            continue
        best, missing, _ = lst
        for i in scores:
            scores[i] += weight * best.get(i, missing)
    order = sorted(scores, key=lambda i: (-scores[i], i))[:k]
    return [SearchHit(**{**hits[i].__dict__, "score": scores[i]}) for i in order]


def _normalised_list(ranking: Sequence[SearchHit], floor: float | None,
                     norm: str) -> tuple[dict[str, float], float, float] | None:
    """``({id: normalised score}, the missing hits' score, the best hit's gap to the second)``; None when empty."""
    if not ranking:
        return None
    raw = [h.score for h in ranking]
    below = floor is not None and floor < min(raw)
    normalised = normalise_scores([*raw, floor] if below else raw, norm)
    best: dict[str, float] = {}
    for hit, value in zip(ranking, normalised, strict=False):
        best[hit.id] = max(best.get(hit.id, -np.inf), float(value))
    missing = float(normalised[-1]) if below else min(best.values())
    top = sorted(normalised[: len(raw)], reverse=True)
    gap = float(top[0] - (top[1] if len(top) > 1 else missing))
    return best, missing, gap
