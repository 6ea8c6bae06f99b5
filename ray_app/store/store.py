"""Prism's Postgres + pgvector store: a connection pool, idempotent bulk writes, and search.

Writes go through binary ``COPY`` into per-transaction staging tables, then
``INSERT ... ON CONFLICT`` on deterministic ids, all in one transaction per call: writing the
same batch twice changes nothing, and a killed writer leaves no half-written batch.

The pool checks each connection before handing it out (a database restart leaves no dead
connection behind), waits at most ``PRISM_POOL_TIMEOUT_S`` for one, and keeps reconnecting on its
own; reads are retried once on a broken connection, and a database that cannot be reached is a
:class:`StoreError` (503 at the API), never a hang.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import psycopg
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from ray_app.errors import Unavailable
from ray_app.settings import Settings, get_settings
from ray_app.store.fusion import FusionParams, load_fusion_params
from ray_app.store.lexical import ChunkTerms, LexicalIndex, build_lexical_index
from ray_app.store.migrations import apply_migrations
from ray_app.store.rows import (
    ChunkRow,
    DocumentRow,
    ImageRow,
    SearchHit,
    StoreInputError,
    check_vector,
    validate_rows,
)

log = logging.getLogger(__name__)
# The state of the chunk change log (migration 0023): it moves whenever a committed write changed chunks.
_CHANGES_STATE = "SELECT ARRAY[count(*), coalesce(max(id), 0)] FROM chunk_changes"


class StoreError(Unavailable, RuntimeError):
    """The database could not be reached or configured."""

    code = "database_unavailable"


@dataclass
class WriteStats:
    documents: int = 0
    chunks: int = 0
    images: int = 0
    deleted_chunks: int = 0


@dataclass
class Filters:
    """Restrict a search to documents from some sources and/or categories."""

    sources: Sequence[str] | None = None
    categories: Sequence[str] | None = None

    def sql(self, alias: str = "d") -> tuple[str, list]:
        clauses, params = [], []
        if self.sources:
            clauses.append(f"{alias}.source = ANY(%s)")
            params.append(list(self.sources))
        if self.categories:
            clauses.append(f"{alias}.category = ANY(%s)")
            params.append(list(self.categories))
        return (" AND ".join(clauses) or "TRUE"), params


def resolve_url(settings: Settings | None = None) -> str:
    """Return DATABASE_URL, or the running embedded server's URL.

    Raises:
        StoreError: when neither is available (run `prism db up`).
    """
    settings = settings or get_settings()
    if settings.database_url:
        return settings.database_url
    from ray_app.store.embedded import embedded_url

    url = embedded_url(settings.pg_dir)
    if url is None:
        raise StoreError(f"no database: the embedded server under {settings.pg_dir} is not running (run `prism db up`)")
    return url


def _configure(conn: psycopg.Connection) -> None:
    register_vector(conn)


def unreachable(exc: psycopg.OperationalError) -> StoreError:
    """The :class:`StoreError` for a database that could not be reached or dropped the connection."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreError(f"the database cannot be reached: {detail}")


def retried_read(method):
    """A read made once more when its connection broke (a restarted server); then :class:`StoreError`.

    A pool that found no connection in time is not retried: the database is down, and a second
    wait would only double the client's.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except PoolTimeout as exc:
            raise unreachable(exc) from exc
        except psycopg.OperationalError as exc:
            log.warning("%s: %s; retrying once", method.__name__, str(exc).strip().splitlines()[:1])
            try:
                return method(self, *args, **kwargs)
            except psycopg.OperationalError as again:
                raise unreachable(again) from again

    return wrapper


def write_op(method):
    """A write whose lost connection is a :class:`StoreError` (not retried: it may have committed)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except psycopg.OperationalError as exc:
            raise unreachable(exc) from exc

    return wrapper


class Store:
    """The store: owns a connection pool; safe to share between threads.

    Args:
        url: PostgreSQL URL; defaults to :func:`resolve_url`.
        settings: settings to read index and pool parameters from.
        migrate: apply pending migrations on open.
    """

    def __init__(self, url: str | None = None, settings: Settings | None = None, migrate: bool = True):
        self.settings = settings or get_settings()
        self.url = url or resolve_url(self.settings)
        try:
            with psycopg.connect(self.url, connect_timeout=10, autocommit=True) as conn:
                if migrate:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                    apply_migrations(conn, self.settings)
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {str(exc).strip().splitlines()[0]}") from exc
        self.pool = ConnectionPool(
            self.url,
            min_size=self.settings.pool_min_size,
            max_size=self.settings.pool_max_size,
            configure=_configure,
            check=ConnectionPool.check_connection,
            timeout=self.settings.pool_timeout_s,
            reconnect_timeout=self.settings.pool_reconnect_timeout_s,
            open=True,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(self.settings.pool_timeout_s))},
        )
        self.fusion = load_fusion_params()
        self._lexical: LexicalIndex | None = None
        self._lexical_lock = threading.Lock()

    @retried_read
    def ping(self) -> None:
        """One round trip to the database (readiness checks).

        Raises:
            StoreError: it cannot be reached.
        """
        with self.pool.connection() as conn:
            conn.execute("SELECT 1").fetchone()

    def usable(self) -> bool:
        """The pool is open (a closed pool never recovers; a database that is down does, by itself)."""
        return not self.pool.closed

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    @write_op
    def write(
        self,
        documents: Sequence[DocumentRow] = (),
        chunks: Sequence[ChunkRow] = (),
        images: Sequence[ImageRow] = (),
    ) -> WriteStats:
        """Upsert documents, chunks and images in one transaction.

        A document's chunks with ``ord >= n_chunks`` are deleted (a shorter new version replaces
        the old one). Rows are validated first; a bad row raises before anything is written.
        A batch of documents none of which is stored yet (a bulk load) is copied straight into the
        tables (:func:`_copy_new_documents`); any other batch goes through staging tables and
        ``INSERT ... ON CONFLICT``.

        Returns:
            Rows inserted or changed per table (0 when the same batch is written again).

        Raises:
            StoreInputError: a row is malformed.
        """
        documents, chunks, images = list(documents), list(chunks), list(images)
        validate_rows(documents, chunks, images)
        stats = WriteStats()
        with self.pool.connection() as conn, conn.transaction():
            if _copy_new_documents(conn, documents, chunks, images, stats):
                return stats
            if documents:
                stats.documents = _upsert_documents(conn, documents)
                stats.deleted_chunks = conn.execute(
                    "DELETE FROM chunks c USING _stage_documents s WHERE c.doc_id = s.id AND c.ord >= s.n_chunks"
                ).rowcount
            if chunks:
                stats.chunks = _upsert_chunks(conn, chunks)
            if images:
                stats.images = _upsert_images(conn, images)
        return stats

    @retried_read
    def document_hashes(self, ids: Iterable[str]) -> dict[str, str]:
        """Return ``{id: content_hash}`` for the given documents that are completely written."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT d.id, d.content_hash FROM documents d WHERE d.id = ANY(%s)"
                " AND d.n_chunks = (SELECT count(*) FROM chunks c WHERE c.doc_id = d.id)",
                (list(ids),),
            ).fetchall()
        return dict(rows)

    @retried_read
    def counts(self) -> dict[str, int]:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks), (SELECT count(*) FROM images)"
            ).fetchone()
        return {"documents": row[0], "chunks": row[1], "images": row[2]}

    def build_indexes(self) -> None:
        """Build the HNSW and full-text indexes a bulk load dropped (``drop_bulk_indexes``), the HNSW
        ones with parallel maintenance workers; indexes that exist are left as they are."""
        s = self.settings
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"SET maintenance_work_mem = '{_safe_setting(s.maintenance_work_mem)}'")
            conn.execute(f"SET max_parallel_maintenance_workers = {int(s.max_parallel_maintenance_workers)}")
            conn.execute("CREATE INDEX IF NOT EXISTS chunks_tsv_idx ON chunks USING gin (tsv)")
            for table in ("chunks", "images"):
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {table}_embedding_hnsw ON {table} USING hnsw "
                    f"(embedding vector_cosine_ops) WITH (m = {int(s.hnsw_m)}, ef_construction = {int(s.hnsw_ef_construction)})"
                )

    def drop_bulk_indexes(self) -> None:
        """Drop the indexes a bulk load would otherwise update row by row (HNSW and the full-text
        GIN index); ``build_indexes`` builds them again in one pass. Search works meanwhile, by scans."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            for index in ("chunks_embedding_hnsw", "images_embedding_hnsw", "chunks_tsv_idx"):
                conn.execute(f"DROP INDEX IF EXISTS {index}")

    # ------------------------------------------------------------------ search
    @retried_read
    def search_vector(
        self, embedding, k: int = 10, kind: str = "chunk", filters: Filters | None = None,
        ef_search: int | None = None,
    ) -> list[SearchHit]:
        """Nearest chunks (or images) by cosine distance through the HNSW index; score = 1 - distance.

        ``ef_search``: the HNSW query beam for this search (default: the ``hnsw_ef_search`` setting);
        wider finds more of the exact neighbours and takes longer. It is never below ``k``.
        """
        _check_k(k)
        query = check_vector(embedding, "query")
        table = {"chunk": "chunks", "image": "images"}.get(kind)
        if table is None:
            raise StoreInputError(f"kind must be 'chunk' or 'image', got {kind!r}")
        where, params = (filters or Filters()).sql()
        text_col = "x.text" if table == "chunks" else "x.caption"
        path_col = "NULL" if table == "chunks" else "x.path"
        sql = (
            f"SELECT x.id, x.doc_id, d.title, {text_col}, 1 - (x.embedding <=> %s) AS score, d.source, d.category, {path_col}"
            f" FROM {table} x LEFT JOIN documents d ON d.id = x.doc_id"
            f" WHERE x.embedding IS NOT NULL AND {where}"
            f" ORDER BY x.embedding <=> %s LIMIT %s"
        )
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(f"SET LOCAL hnsw.ef_search = {int(max(ef_search or self.settings.hnsw_ef_search, k))}")
            rows = conn.execute(sql, [query, *params, query, k]).fetchall()
        return [SearchHit(kind, r[0], r[1], r[2], r[3], float(r[4]), r[5], r[6], r[7]) for r in rows]

    @retried_read
    def images_with_sha256(self, sha256: str, k: int = 5) -> list[SearchHit]:
        """Stored images whose file bytes hash to ``sha256`` (exact copies), score 1.0."""
        _check_k(k)
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT x.id, x.doc_id, d.title, x.caption, d.source, d.category, x.path FROM images x"
                " LEFT JOIN documents d ON d.id = x.doc_id WHERE x.sha256 = %s ORDER BY x.id LIMIT %s",
                (sha256, k),
            ).fetchall()
        return [SearchHit("image", r[0], r[1], r[2], r[3], 1.0, r[4], r[5], r[6]) for r in rows]

    @retried_read
    def search_text(self, text: str, k: int = 10, filters: Filters | None = None) -> list[SearchHit]:
        """Okapi BM25 over the chunks (:mod:`ray_app.store.lexical`): any query term may match.

        The query is tokenised by Postgres (``to_tsvector('english')``, as the chunks were), in the
        same round trip that reads the ``chunk_changes`` state; an index built at another state is
        rebuilt first, so the statistics are those of the store as it is now.
        """
        _check_k(k)
        if not (text or "").strip():
            raise StoreInputError("query text is empty")
        filters = filters or Filters()
        with self.pool.connection() as conn:
            version, lexemes, counts = conn.execute(
                f"SELECT ({_CHANGES_STATE}), array_agg(u.lexeme), array_agg(cardinality(u.positions))"
                " FROM unnest(to_tsvector('english', %s)) u", (text,)
            ).fetchone()
        if not lexemes:
            return []
        index = self.lexical_index(tuple(version))
        ranked = index.search(dict(zip(lexemes, counts, strict=True)), k, filters.sources, filters.categories)
        return self._chunk_hits(ranked, filters)

    def lexical_index(self, version: tuple | None = None) -> LexicalIndex:
        """The BM25 index of the chunks, rebuilt when ``version`` (the ``chunk_changes`` state) moved on."""
        index = self._lexical
        if index is not None and version is not None and index.version == version:
            return index
        with self._lexical_lock:
            index = self._lexical
            if index is None or version is None or index.version != version:
                index = self._lexical = self._build_lexical_index()
        return index

    def _build_lexical_index(self) -> LexicalIndex:
        """Build the BM25 index from one snapshot of the chunks, with the change state it belongs to."""
        started = time.perf_counter()
        with self.chunk_terms() as (version, chunks):
            index = build_lexical_index(chunks, version=version)
        log.info("BM25 index: %d chunks, %d terms, built in %.2f s", index.n, len(index.vocabulary),
                 time.perf_counter() - started)
        return index

    @contextlib.contextmanager
    def chunk_terms(self) -> Iterator[tuple[tuple, Iterator[ChunkTerms]]]:
        """``(change state, every chunk's ChunkTerms)`` read in one REPEATABLE READ snapshot, streamed
        from a server-side cursor (however many chunks); iterate inside the ``with``."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            version = tuple(conn.execute(_CHANGES_STATE).fetchone()[0])
            with conn.cursor("prism_lexical") as cursor:
                cursor.itersize = 10_000
                cursor.execute(
                    "SELECT c.id, d.source, d.category, coalesce(t.lexemes, '{}'), coalesce(t.counts, '{}')"
                    " FROM chunks c JOIN documents d ON d.id = c.doc_id LEFT JOIN LATERAL"
                    " (SELECT array_agg(u.lexeme) AS lexemes, array_agg(cardinality(u.positions)) AS counts"
                    "  FROM unnest(c.tsv) u) t ON TRUE"
                )
                yield version, (ChunkTerms(*row) for row in cursor)

    @retried_read
    def query_terms(self, text: str) -> dict[str, int]:
        """``{lexeme: count}`` of ``text`` as Postgres tokenises chunks (``to_tsvector('english')``)."""
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT u.lexeme, cardinality(u.positions) FROM unnest(to_tsvector('english', %s)) u",
                                (text,)).fetchall()
        return dict(rows)

    def _chunk_hits(self, ranked: Sequence[tuple[str, float]], filters: Filters) -> list[SearchHit]:
        """The chunks of ``[(id, score)]`` as hits, in that order (a chunk deleted meanwhile drops out)."""
        if not ranked:
            return []
        where, params = filters.sql()
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT c.id, c.doc_id, d.title, c.text, d.source, d.category FROM chunks c"
                f" JOIN documents d ON d.id = c.doc_id WHERE c.id = ANY(%s) AND {where}",
                [[i for i, _ in ranked], *params],
            ).fetchall()
        by_id = {r[0]: r for r in rows}
        return [SearchHit("chunk", i, by_id[i][1], by_id[i][2], by_id[i][3], score, by_id[i][4], by_id[i][5])
                for i, score in ranked if i in by_id]

    def search_hybrid(
        self, text: str, embedding, k: int = 10, filters: Filters | None = None, depth: int | None = None
    ) -> list[SearchHit]:
        """Vector and BM25 candidates (``depth`` each, default ``max(4k, fusion depth)``) merged by the
        frozen fusion (:meth:`fuse_hybrid`)."""
        _check_k(k)
        depth = depth or max(4 * k, self.fusion.depth)
        vector_hits = self.search_vector(embedding, depth, "chunk", filters)
        text_hits = self.search_text(text, depth, filters) if (text or "").strip() else []
        return self.fuse_hybrid(vector_hits, text_hits, k)

    def fuse_hybrid(self, vector_hits: Sequence[SearchHit], text_hits: Sequence[SearchHit], k: int,
                    fusion: FusionParams | None = None) -> list[SearchHit]:
        """Merge the two lists by ``fusion`` (default: the frozen parameters, ``ray_app/store/fusion.json``)."""
        return (fusion or self.fusion).fuse(vector_hits, text_hits, k)

    @retried_read
    def get_document(self, doc_id: str) -> dict | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT id, source, title, url, license, category, metadata, n_chunks FROM documents WHERE id = %s",
                (doc_id,),
            ).fetchone()
            if row is None:
                return None
            chunks = conn.execute("SELECT id, text FROM chunks WHERE doc_id = %s ORDER BY ord", (doc_id,)).fetchall()
        keys = ("id", "source", "title", "url", "license", "category", "metadata", "n_chunks")
        return dict(zip(keys, row, strict=True)) | {"chunks": [{"id": c[0], "text": c[1]} for c in chunks]}

    @retried_read
    def get_image(self, image_id: str) -> dict | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT id, doc_id, caption, path, sha256, width, height FROM images WHERE id = %s", (image_id,)
            ).fetchone()
        keys = ("id", "doc_id", "caption", "path", "sha256", "width", "height")
        return None if row is None else dict(zip(keys, row, strict=True))


def _check_k(k: int) -> None:
    if not isinstance(k, int) or not 1 <= k <= 1000:
        raise StoreInputError(f"k must be an integer in 1..1000, got {k!r}")


def _safe_setting(value: str) -> str:
    if not value.replace(" ", "").isalnum():
        raise StoreInputError(f"invalid setting value {value!r}")
    return value


def _copy_rows(conn: psycopg.Connection, table: str, columns: Sequence[str], types: Sequence[str], rows) -> None:
    with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)


DOCUMENT_COLUMNS = ("id", "source", "title", "url", "license", "category", "content_hash", "n_chunks", "metadata")
DOCUMENT_TYPES = ("text",) * 7 + ("int4", "jsonb")
CHUNK_COLUMNS = ("id", "doc_id", "ord", "text", "embedding")
CHUNK_TYPES = ("text", "text", "int4", "text", "vector")
IMAGE_COLUMNS = ("id", "doc_id", "caption", "path", "sha256", "width", "height", "embedding")
IMAGE_TYPES = ("text",) * 5 + ("int4", "int4", "vector")


def _document_tuple(d: DocumentRow) -> tuple:
    return d.id, d.source, d.title, d.url, d.license, d.category, d.content_hash, d.n_chunks, Jsonb(d.metadata)


def _chunk_tuple(c: ChunkRow) -> tuple:
    return c.id, c.doc_id, c.ord, c.text, c.embedding


def _image_tuple(i: ImageRow) -> tuple:
    return i.id, i.doc_id, i.caption, i.path, i.sha256, i.width, i.height, i.embedding


def _copy_new_documents(conn: psycopg.Connection, documents: list[DocumentRow], chunks: list[ChunkRow],
                        images: list[ImageRow], stats: WriteStats) -> bool:
    """Binary ``COPY`` straight into ``documents``, ``chunks`` and ``images`` when the batch only adds
    rows: distinct ids, every chunk and image belonging to a document of the batch, and none of those
    documents or images stored yet. Returns False (nothing written) for any other batch.

    It runs inside the caller's transaction, under a savepoint: a writer that stores one of the
    same documents meanwhile makes the COPY fail on the primary key, the savepoint rolls it back and
    the caller upserts the batch instead. No staging table, no sort, no ``ON CONFLICT`` arbiter.
    """
    doc_ids = {d.id for d in documents}
    if (not documents or len(doc_ids) < len(documents) or len({c.id for c in chunks}) < len(chunks)
            or len({i.id for i in images}) < len(images)
            or any(c.doc_id not in doc_ids for c in chunks) or any(i.doc_id not in doc_ids for i in images)):
        return False
    stored = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM documents WHERE id = ANY(%s)) OR EXISTS (SELECT 1 FROM images WHERE id = ANY(%s))",
        (list(doc_ids), [i.id for i in images]),
    ).fetchone()[0]
    if stored:
        return False
    try:
        with conn.transaction():
            _copy_rows(conn, "documents", DOCUMENT_COLUMNS, DOCUMENT_TYPES, map(_document_tuple, documents))
            if chunks:
                _copy_rows(conn, "chunks", CHUNK_COLUMNS, CHUNK_TYPES, map(_chunk_tuple, chunks))
            if images:
                _copy_rows(conn, "images", IMAGE_COLUMNS, IMAGE_TYPES, map(_image_tuple, images))
    except psycopg.errors.UniqueViolation:
        log.info("a concurrent writer stored some of these %d documents first; upserting instead", len(documents))
        return False
    stats.documents, stats.chunks, stats.images = len(documents), len(chunks), len(images)
    return True


def _upsert_documents(conn: psycopg.Connection, documents: list[DocumentRow]) -> int:
    conn.execute(
        "CREATE TEMP TABLE _stage_documents (id text, source text, title text, url text, license text,"
        " category text, content_hash text, n_chunks integer, metadata jsonb) ON COMMIT DROP"
    )
    cols = DOCUMENT_COLUMNS
    _copy_rows(conn, "_stage_documents", cols, DOCUMENT_TYPES, map(_document_tuple, documents))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols[1:])
    return conn.execute(
        f"INSERT INTO documents ({', '.join(cols)}) SELECT DISTINCT ON (id) {', '.join(cols)} FROM _stage_documents"
        f" ORDER BY id ON CONFLICT (id) DO UPDATE SET {updates}, updated_at = now()"
        " WHERE documents.content_hash IS DISTINCT FROM EXCLUDED.content_hash"
        " OR documents.n_chunks IS DISTINCT FROM EXCLUDED.n_chunks"
        " OR documents.title IS DISTINCT FROM EXCLUDED.title OR documents.metadata IS DISTINCT FROM EXCLUDED.metadata"
    ).rowcount


def _upsert_chunks(conn: psycopg.Connection, chunks: list[ChunkRow]) -> int:
    conn.execute(
        "CREATE TEMP TABLE _stage_chunks (id text, doc_id text, ord integer, text text, embedding vector(384))"
        " ON COMMIT DROP"
    )
    _copy_rows(conn, "_stage_chunks", CHUNK_COLUMNS, CHUNK_TYPES, map(_chunk_tuple, chunks))
    return conn.execute(
        "INSERT INTO chunks (id, doc_id, ord, text, embedding)"
        " SELECT DISTINCT ON (id) id, doc_id, ord, text, embedding FROM _stage_chunks ORDER BY id"
        " ON CONFLICT (id) DO UPDATE SET doc_id = EXCLUDED.doc_id, ord = EXCLUDED.ord, text = EXCLUDED.text,"
        " embedding = EXCLUDED.embedding"
        " WHERE chunks.text IS DISTINCT FROM EXCLUDED.text OR chunks.embedding IS DISTINCT FROM EXCLUDED.embedding"
    ).rowcount


def _upsert_images(conn: psycopg.Connection, images: list[ImageRow]) -> int:
    conn.execute(
        "CREATE TEMP TABLE _stage_images (id text, doc_id text, caption text, path text, sha256 text,"
        " width integer, height integer, embedding vector(384)) ON COMMIT DROP"
    )
    cols = IMAGE_COLUMNS
    _copy_rows(conn, "_stage_images", cols, IMAGE_TYPES, map(_image_tuple, images))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols[1:])
    return conn.execute(
        f"INSERT INTO images ({', '.join(cols)}) SELECT DISTINCT ON (id) {', '.join(cols)} FROM _stage_images"
        f" ORDER BY id ON CONFLICT (id) DO UPDATE SET {updates}"
        " WHERE images.caption IS DISTINCT FROM EXCLUDED.caption OR images.path IS DISTINCT FROM EXCLUDED.path"
        " OR images.sha256 IS DISTINCT FROM EXCLUDED.sha256 OR images.embedding IS DISTINCT FROM EXCLUDED.embedding"
    ).rowcount


_store: Store | None = None


def get_store() -> Store:
    """The process-wide store (one connection pool per process).

    In a Ray Serve replica it is the serving role's store (:func:`ray_app.store.roles.get_serving_store`: no
    DDL rights, no migrations, ``statement_timeout``); everywhere else (CLI, jobs, tests) the owner's.
    """
    global _store
    if _in_serve_replica():
        from ray_app.store.roles import get_serving_store

        return get_serving_store()
    if _store is None:
        _store = Store()
    return _store


def _in_serve_replica() -> bool:
    import sys

    if "ray.serve" not in sys.modules:  # a replica has imported Serve; nothing else needs to
        return False
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True


def close_store() -> None:
    """Close and forget the process-wide stores (tests, after the settings change)."""
    from ray_app.store.roles import close_serving_store

    close_serving_store()
    global _store
    if _store is not None:
        _store.close()
        _store = None
