"""Okapi BM25 over the chunks' Postgres lexemes, held in memory beside the store.

Postgres tokenises: each chunk's ``tsv`` (``to_tsvector('english', text)``: Snowball stems, no stop
words, one position per occurrence) gives its terms, term frequencies (positions per lexeme) and its
length (positions in all), and a query goes through the same ``to_tsvector``, so both sides stem
alike. The index precomputes every posting's BM25 weight into one sparse matrix (terms × chunks,
CSR), so a query is the sum of its terms' rows and a top-k: a few milliseconds at 10k chunks, tens
at 1M (docs/reports/retrieval.md).

    w(t, d) = idf(t) · tf(t, d) · (k1 + 1) / (tf(t, d) + k1 · (1 − b + b · |d| / avgdl))
    idf(t)  = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))            (Lucene's non-negative form)

The statistics belong to one snapshot of the chunks; :class:`ray_app.store.Store` rebuilds the index
when the ``chunk_changes`` log (migration 0023) says a write changed them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

K1 = 1.2
B = 0.75


@dataclass
class ChunkTerms:
    """One chunk as the index reads it: id, source/category (filters) and its lexemes with their counts."""

    id: str
    source: str | None
    category: str | None
    lexemes: Sequence[str]
    counts: Sequence[int]


@dataclass
class LexicalIndex:
    """BM25 weights of every (term, chunk) pair of one snapshot of the chunks.

    Attributes:
        ids: chunk ids, in column order.
        vocabulary: lexeme -> row of ``weights``.
        weights: (terms, chunks) CSR matrix of BM25 posting weights.
        df: document frequency per term row.
        lengths: chunk lengths (positions).
        sources, categories: per chunk, a code into ``source_names`` / ``category_names`` (filters).
        source_names, category_names: code -> name.
        version: the ``chunk_changes`` state the index was built at.
    """

    ids: list[str]
    vocabulary: dict[str, int]
    weights: sparse.csr_matrix
    df: np.ndarray
    lengths: np.ndarray
    sources: np.ndarray
    categories: np.ndarray
    source_names: list[str]
    category_names: list[str]
    k1: float = K1
    b: float = B
    version: tuple = field(default=())

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def avgdl(self) -> float:
        return float(self.lengths.mean()) if self.n else 0.0

    def idf(self, lexeme: str) -> float:
        """The term's IDF in this snapshot (0.0 for a term no chunk has)."""
        row = self.vocabulary.get(lexeme)
        if row is None:
            return 0.0
        return float(_idf(self.df[row : row + 1], self.n)[0])

    def search(self, terms: dict[str, int], k: int, sources: Sequence[str] | None = None,
               categories: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """The ``k`` best chunks for a query's ``{lexeme: count}``: ``[(chunk id, score)]``, best first.

        A chunk scores when it holds at least one query term; ties go to the smaller id.
        """
        rows = [self.vocabulary[t] for t in terms if t in self.vocabulary]
        if not rows or not self.n:
            return []
        weights = np.asarray([terms[t] for t in terms if t in self.vocabulary], dtype=np.float32)
        scores = np.asarray(self.weights[rows].T @ weights).reshape(-1)
        allowed = scores > 0
        if sources:
            allowed &= np.isin(self.sources, _codes(self.source_names, sources))
        if categories:
            allowed &= np.isin(self.categories, _codes(self.category_names, categories))
        candidates = np.flatnonzero(allowed)
        if len(candidates) > k:
            top = np.argpartition(-scores[candidates], k - 1)[:k]
            # keep every chunk tied with the k-th, so the id tie-break below is exact
            kth = scores[candidates[top]].min()
            candidates = candidates[scores[candidates] >= kth]
        order = sorted(candidates.tolist(), key=lambda i: (-scores[i], self.ids[i]))[:k]
        return [(self.ids[i], float(scores[i])) for i in order]


def _codes(names: list[str], wanted: Sequence[str]) -> list[int]:
    return [i for i, name in enumerate(names) if name in set(wanted)]


def _idf(df: np.ndarray, n: int) -> np.ndarray:
    return np.log1p((n - df + 0.5) / (df + 0.5))


def build_lexical_index(chunks: Iterable[ChunkTerms], k1: float = K1, b: float = B,
                        version: tuple = ()) -> LexicalIndex:
    """Count every chunk's terms into BM25 posting weights (one pass, then one sparse build)."""
    ids, sources, categories, lengths = [], [], [], []
    vocabulary: dict[str, int] = {}
    source_codes: dict[str, int] = {}
    category_codes: dict[str, int] = {}
    term_rows: list[np.ndarray] = []
    tfs: list[np.ndarray] = []
    for chunk in chunks:
        ids.append(chunk.id)
        sources.append(source_codes.setdefault(chunk.source or "", len(source_codes)))
        categories.append(category_codes.setdefault(chunk.category or "", len(category_codes)))
        term_rows.append(np.fromiter((vocabulary.setdefault(t, len(vocabulary)) for t in chunk.lexemes),
                                     dtype=np.int64, count=len(chunk.lexemes)))
        counts = np.asarray(chunk.counts, dtype=np.float32)
        tfs.append(counts)
        lengths.append(float(counts.sum()))
    n, n_terms = len(ids), len(vocabulary)
    lengths_arr = np.asarray(lengths, dtype=np.float32)
    rows = np.concatenate(term_rows) if term_rows else np.zeros(0, dtype=np.int64)
    tf = np.concatenate(tfs) if tfs else np.zeros(0, dtype=np.float32)
    cols = np.repeat(np.arange(n), [len(r) for r in term_rows]) if n else np.zeros(0, dtype=np.int64)
    df = np.bincount(rows, minlength=n_terms).astype(np.float32)
    avgdl = float(lengths_arr.mean()) if n else 1.0
    norm = k1 * (1 - b + b * lengths_arr[cols] / max(avgdl, 1e-9))
    values = _idf(df, n)[rows] * tf * (k1 + 1) / (tf + norm)
    weights = sparse.csr_matrix((values.astype(np.float32), (rows, cols)), shape=(n_terms, n))
    return LexicalIndex(ids, vocabulary, weights, df, lengths_arr, np.asarray(sources, dtype=np.int32),
                        np.asarray(categories, dtype=np.int32), list(source_codes), list(category_codes), k1, b, version)
