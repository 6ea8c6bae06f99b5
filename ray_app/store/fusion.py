"""Hybrid search's fusion of the vector and BM25 lists, with parameters frozen in ``fusion.json``.

``prism eval retrieval --tune`` chooses the method and weight on the dev split of every evaluation
set (docs/reports/retrieval.md) and writes ``fusion.json`` next to this file; the store, the serving
graph and the edge runtime load it, and the report's test split never takes part in the choice.
Needs numpy only (the edge runtime imports it without Postgres).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ray_app.store.rows import SearchHit, fuse_convex, fuse_rrf

FUSION_FILE = Path(__file__).with_name("fusion.json")
METHODS = ("zscore", "minmax", "rrf")


@dataclass(frozen=True)
class FusionParams:
    """How hybrid search merges its two lists.

    Attributes:
        method: ``zscore`` or ``minmax`` (convex combination of normalised scores) or ``rrf``.
        text_weight: the BM25 list's weight; the vector list weighs ``1 - text_weight`` (convex) or 1 (rrf).
        sharpness: per query, lean on the list whose best hit stands out (convex methods; 0: fixed weights;
            :func:`ray_app.store.rows.fuse_convex`).
        rrf_k: the reciprocal-rank constant (``rrf`` only).
        depth: candidates each list contributes (at least ``4 * k``).
        chosen_on: where the values were chosen (the command and split), for the record.
    """

    method: str = "zscore"
    text_weight: float = 0.5
    sharpness: float = 0.0
    rrf_k: int = 60
    depth: int = 40
    chosen_on: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"fusion method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.0 <= self.text_weight <= 1.0:
            raise ValueError(f"fusion text_weight must be in [0, 1], got {self.text_weight}")
        if self.sharpness < 0:
            raise ValueError(f"fusion sharpness must be >= 0, got {self.sharpness}")

    def fuse(self, vector_hits: Sequence[SearchHit], text_hits: Sequence[SearchHit], k: int) -> list[SearchHit]:
        """The fused top ``k`` of the two lists."""
        if self.method == "rrf":
            return fuse_rrf([vector_hits, text_hits], k, self.rrf_k, weights=(1.0, self.text_weight))
        # a chunk that BM25 did not return scores at most what it returned; one without any query term scores 0
        return fuse_convex([vector_hits, text_hits], k, (1.0 - self.text_weight, self.text_weight), self.method,
                           floors=(None, 0.0), sharpness=self.sharpness)

    def to_dict(self) -> dict:
        return asdict(self)


def load_fusion_params(path: Path | None = None) -> FusionParams:
    """The frozen fusion parameters (``fusion.json``); the dataclass defaults where there is no file."""
    path = path or FUSION_FILE
    if not path.exists():
        return FusionParams()
    data = json.loads(path.read_text())
    return FusionParams(**{k: data[k] for k in ("method", "text_weight", "sharpness", "rrf_k", "depth", "chosen_on") if k in data})


def save_fusion_params(params: FusionParams, path: Path | None = None) -> Path:
    """Freeze ``params`` into ``fusion.json`` (what ``prism eval retrieval --tune`` does)."""
    path = path or FUSION_FILE
    path.write_text(json.dumps(params.to_dict(), indent=2, sort_keys=True) + "\n")
    return path
