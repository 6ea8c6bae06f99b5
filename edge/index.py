"""The edge retrieval index: one SQLite file with the passages, captions, licences and vectors.

``index.sqlite`` holds the documents (title, source, licence, URL), the chunks (text, float32 vector)
with an FTS5 table over their text, and the images (caption, sha256, vector). The vectors load into
one matrix per kind at start and are searched exactly (a BLAS matrix-vector product: at the corpus
sizes a device holds, ≤ 100k vectors, it takes a few milliseconds and finds the true neighbours;
``prism bench edge`` measures it against FAISS, usearch and sqlite-vec, docs/reports/edge.md).

:class:`EdgeIndex` answers the same calls as :class:`ray_app.store.Store` that retrieval and vision
make (``search_vector``, ``search_text``, ``fuse_hybrid``, ``images_with_sha256``, ``titles``), so
:func:`ray_app.ask.retrieval.retrieve_passages` runs on it unchanged. It needs only the standard
library's ``sqlite3`` and numpy.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ray_app.errors import InputError
from ray_app.settings import EMBED_DIM
from ray_app.store.fusion import FusionParams, load_fusion_params
from ray_app.store.rows import SearchHit

INDEX_NAME = "index.sqlite"
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (id TEXT PRIMARY KEY, source TEXT NOT NULL, title TEXT NOT NULL, url TEXT,
                        license TEXT, category TEXT);
CREATE TABLE chunks (rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc_id TEXT NOT NULL REFERENCES documents,
                     text TEXT NOT NULL, embedding BLOB NOT NULL);
CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks', content_rowid='rowid',
                                           tokenize='porter unicode61');
CREATE TABLE images (rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc_id TEXT REFERENCES documents,
                     caption TEXT, sha256 TEXT, embedding BLOB);
CREATE INDEX images_sha256 ON images (sha256);
"""
_WORD = re.compile(r"\w+")
# Postgres' english configuration drops these; FTS5 has no stop list, and OR-ing them matches everything.
STOPWORDS = frozenset(
    "a an and are as at be by for from has have how i in is it its of on or that the this to was what when where "
    "which who why with does do did can you your me my about into than then there these those".split())


class IndexNotFound(InputError):
    """The index file is missing or not an edge index."""


def write_index(path: Path, documents: Iterable[dict], chunks: Iterable[dict], images: Iterable[dict] = (),
                meta: dict[str, str] | None = None) -> dict[str, int]:
    """Write a new index file at ``path`` (replaced atomically); returns the row counts.

    Args:
        documents: ``{"id", "source", "title", "url", "license", "category"}``.
        chunks: ``{"id", "doc_id", "text", "embedding"}`` (384 floats).
        images: ``{"id", "doc_id", "caption", "sha256", "embedding"}`` (embedding may be None).
        meta: extra ``key: value`` strings (where the rows came from).
    """
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    try:
        conn.executescript(SCHEMA)
        conn.executemany("INSERT INTO documents VALUES (:id, :source, :title, :url, :license, :category)",
                         ({k: d.get(k) for k in ("id", "source", "title", "url", "license", "category")}
                          for d in documents))
        conn.executemany("INSERT INTO chunks (id, doc_id, text, embedding) VALUES (?, ?, ?, ?)",
                         ((c["id"], c["doc_id"], c["text"], _blob(c["embedding"])) for c in chunks))
        conn.execute("INSERT INTO chunks_fts (chunks_fts) VALUES ('rebuild')")
        conn.executemany("INSERT INTO images (id, doc_id, caption, sha256, embedding) VALUES (?, ?, ?, ?, ?)",
                         ((i["id"], i.get("doc_id"), i.get("caption"), i.get("sha256"),
                           None if i.get("embedding") is None else _blob(i["embedding"])) for i in images))
        conn.executemany("INSERT INTO meta VALUES (?, ?)", (meta or {}).items())
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("documents", "chunks", "images")}
        conn.commit()
        conn.execute("VACUUM")
    finally:
        conn.close()
    tmp.replace(path)
    return counts


def _blob(vector) -> bytes:
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    if array.shape != (EMBED_DIM,) or not np.isfinite(array).all():
        raise InputError(f"an index vector must be {EMBED_DIM} finite floats")
    return array.tobytes()


def fts_query(text: str) -> str | None:
    """An FTS5 query matching any non-stopword of ``text`` (each quoted, so no FTS syntax gets through)."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words)) or None


class EdgeIndex:
    """Read-only search over an ``index.sqlite`` (thread-safe: one connection per thread).

    Args:
        path: the index file.
        fusion: how hybrid search merges its lists (default: the server's frozen ``fusion.json``).
    """

    def __init__(self, path: str | Path, fusion: FusionParams | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise IndexNotFound(f"no edge index at {self.path}")
        self.fusion = fusion or load_fusion_params()
        self._local = threading.local()
        conn = self.conn()
        self.meta = dict(conn.execute("SELECT key, value FROM meta"))
        self.chunk_ids, self.chunk_sources, self.chunk_vectors = self._load_vectors("chunks")
        self.image_ids, self.image_sources, self.image_vectors = self._load_vectors("images")

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self._local.conn = conn
        return conn

    def _load_vectors(self, table: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Ids, sources and the (n, 384) matrix of one table's vectors, in row order."""
        rows = self.conn().execute(f"SELECT x.id, d.source, x.embedding FROM {table} x LEFT JOIN documents d"
                                   " ON d.id = x.doc_id WHERE x.embedding IS NOT NULL ORDER BY x.rowid")
        ids, sources, blobs = [], [], []
        for row_id, source, blob in rows:
            ids.append(row_id)
            sources.append(source or "")
            blobs.append(blob)
        matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), EMBED_DIM)
        return ids, np.asarray(sources, dtype=object), matrix

    def counts(self) -> dict[str, int]:
        conn = self.conn()
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("documents", "chunks", "images")}

    def search_vector(self, embedding, k: int = 10, kind: str = "chunk", filters=None, ef_search=None) -> list[SearchHit]:
        """The ``k`` nearest chunks (or images) by cosine (vectors are unit length: a dot product), exactly."""
        if kind not in ("chunk", "image"):
            raise InputError(f"kind must be 'chunk' or 'image', got {kind!r}")
        ids, sources, matrix = ((self.chunk_ids, self.chunk_sources, self.chunk_vectors) if kind == "chunk"
                                else (self.image_ids, self.image_sources, self.image_vectors))
        if not len(ids):
            return []
        scores = matrix @ np.asarray(embedding, dtype=np.float32).reshape(EMBED_DIM)
        wanted = getattr(filters, "sources", None)
        if wanted:
            scores = np.where(np.isin(sources, list(wanted)), scores, -np.inf)
        top = [i for i in top_k(scores, k) if np.isfinite(scores[i])]
        return self._hits(kind, [ids[i] for i in top], [float(scores[i]) for i in top], None)

    def search_text(self, text: str, k: int = 10, filters=None) -> list[SearchHit]:
        """Full-text search: any non-stopword may match, ranked by BM25."""
        query = fts_query(text)
        if query is None:
            return []
        rows = self.conn().execute(
            "SELECT c.id, -bm25(chunks_fts) FROM chunks_fts JOIN chunks c ON c.rowid = chunks_fts.rowid"
            " WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts), c.id LIMIT ?", (query, k * 4 if filters else k))
        found = rows.fetchall()
        return self._hits("chunk", [r[0] for r in found], [float(r[1]) for r in found], filters)[:k]

    def search_hybrid(self, text: str, embedding, k: int = 10, filters=None, depth: int | None = None) -> list[SearchHit]:
        depth = depth or max(4 * k, self.fusion.depth)
        vector_hits = self.search_vector(embedding, depth, "chunk", filters)
        text_hits = self.search_text(text, depth, filters) if (text or "").strip() else []
        return self.fuse_hybrid(vector_hits, text_hits, k)

    def fuse_hybrid(self, vector_hits: Sequence[SearchHit], text_hits: Sequence[SearchHit], k: int,
                    fusion: FusionParams | None = None) -> list[SearchHit]:
        return (fusion or self.fusion).fuse(vector_hits, text_hits, k)

    def images_with_sha256(self, sha256: str, k: int = 5) -> list[SearchHit]:
        rows = self.conn().execute("SELECT id FROM images WHERE sha256 = ? ORDER BY id LIMIT ?", (sha256, k))
        ids = [r[0] for r in rows]
        return self._hits("image", ids, [1.0] * len(ids), None)

    def titles(self, limit: int) -> list[str]:
        """Document titles, shortest first (the vision stage's extra label vocabulary)."""
        rows = self.conn().execute("SELECT DISTINCT title FROM documents ORDER BY length(title), title LIMIT ?", (limit,))
        return [r[0] for r in rows]

    def _hits(self, kind: str, ids: list[str], scores: list[float], filters) -> list[SearchHit]:
        if not ids:
            return []
        table, text = ("chunks", "x.text") if kind == "chunk" else ("images", "x.caption")
        marks = ",".join("?" * len(ids))
        rows = self.conn().execute(
            f"SELECT x.id, x.doc_id, d.title, {text}, d.source, d.category FROM {table} x"
            f" LEFT JOIN documents d ON d.id = x.doc_id WHERE x.id IN ({marks})", ids)
        by_id = {r[0]: r for r in rows}
        hits = [SearchHit(kind, i, by_id[i][1], by_id[i][2], by_id[i][3], s, by_id[i][4], by_id[i][5])
                for i, s in zip(ids, scores, strict=True) if i in by_id]
        sources = getattr(filters, "sources", None)
        return [h for h in hits if h.source in sources] if sources else hits

    def document(self, doc_id: str) -> dict | None:
        row = self.conn().execute("SELECT id, source, title, url, license, category FROM documents WHERE id = ?",
                                  (doc_id,)).fetchone()
        return None if row is None else dict(zip(("id", "source", "title", "url", "license", "category"), row,
                                                  strict=True))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first."""
    k = min(k, len(scores))
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]
