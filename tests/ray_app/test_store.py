"""The Postgres + pgvector store against a real embedded PostgreSQL 16 + pgvector."""

from __future__ import annotations

import time

import numpy as np
import psycopg
import pytest

from ray_app.settings import get_settings
from ray_app.store import ChunkRow, DocumentRow, Filters, ImageRow, Store, StoreError, StoreInputError
from ray_app.store.migrations import apply_migrations, list_migrations


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def make_docs(n_docs: int, chunks_per_doc: int, vectors: np.ndarray, source: str = "test", texts=None):
    docs = [
        DocumentRow(id=f"doc{i}", source=source, title=f"Document {i}", content_hash=f"h{i}",
                    n_chunks=chunks_per_doc, category="even" if i % 2 == 0 else "odd")
        for i in range(n_docs)
    ]
    chunks = [
        ChunkRow(f"doc{i}", j, texts[i * chunks_per_doc + j] if texts else f"chunk {j} of document {i}",
                 vectors[i * chunks_per_doc + j])
        for i in range(n_docs)
        for j in range(chunks_per_doc)
    ]
    return docs, chunks


def test_migrations_apply_once_then_noop(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        first = apply_migrations(conn, get_settings())
        second = apply_migrations(conn, get_settings())
        recorded = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE indexdef LIKE '%hnsw%'")}
    assert first == [m.version for m in list_migrations()]
    assert second == []
    assert [r[0] for r in recorded] == first
    assert {"documents", "chunks", "images", "audit_log", "schema_migrations"} <= tables
    assert indexes == {"chunks_embedding_hnsw", "images_embedding_hnsw"}


def test_same_10000_rows_twice_give_10000_rows(store):
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(10_000, 384)))
    docs, chunks = make_docs(2_500, 4, vectors)
    first = store.write(docs, chunks)
    second = store.write(docs, chunks)
    assert (first.documents, first.chunks) == (2_500, 10_000)
    assert (second.documents, second.chunks, second.deleted_chunks) == (0, 0, 0)
    assert store.counts() == {"documents": 2_500, "chunks": 10_000, "images": 0}


def test_changed_document_replaces_its_chunks(store):
    rng = np.random.default_rng(1)
    docs, chunks = make_docs(1, 3, unit(rng.normal(size=(3, 384))))
    store.write(docs, chunks)
    shorter = DocumentRow(id="doc0", source="test", title="Document 0", content_hash="new", n_chunks=1)
    stats = store.write([shorter], [ChunkRow("doc0", 0, "the new text", unit(rng.normal(size=384)))])
    assert stats.deleted_chunks == 2
    doc = store.get_document("doc0")
    assert [c["text"] for c in doc["chunks"]] == ["the new text"]
    assert store.document_hashes(["doc0"]) == {"doc0": "new"}


def test_hnsw_recall_at_10_on_clustered_vectors(store):
    rng = np.random.default_rng(42)
    centres = rng.normal(size=(50, 384)) * 3
    labels = rng.integers(0, 50, size=10_100)
    points = unit(centres[labels] + rng.normal(size=(10_100, 384)))
    corpus, queries = points[:10_000], points[10_000:]
    docs, chunks = make_docs(10_000, 1, corpus)
    store.write(docs, chunks)
    truth = np.argsort(-(queries @ corpus.T), axis=1)[:, :10]  # exact cosine top 10 (unit vectors)
    recalls = []
    for q, expected in zip(queries, truth, strict=True):
        got = {int(h.doc_id.removeprefix("doc")) for h in store.search_vector(q, 10)}
        recalls.append(len(got & set(expected.tolist())) / 10)
    assert np.mean(recalls) >= 0.95


def test_hybrid_ranks_the_document_matching_text_and_vector_first(store, text_embedder):
    texts = [
        "Frogs are amphibians that live in ponds and wetlands.",
        "Frogs croak loudly; the word frog appears here many times: frog frog frog.",
        "Toads and newts are amphibians found near water.",
        "The truck delivered gravel to the construction site.",
    ]
    docs, chunks = make_docs(4, 1, text_embedder.embed(texts), texts=texts)
    store.write(docs, chunks)
    query = "frogs living in ponds"
    hits = store.search_hybrid(query, text_embedder.embed([query])[0], k=3)
    assert hits[0].doc_id == "doc0"
    assert store.search_text("truck gravel", 1)[0].doc_id == "doc3"


def test_filters_by_source_and_category(store):
    rng = np.random.default_rng(3)
    vectors = unit(rng.normal(size=(8, 384)))
    docs_a, chunks_a = make_docs(4, 1, vectors[:4], source="a")
    store.write(docs_a, chunks_a)
    hits = store.search_vector(vectors[0], 10, filters=Filters(categories=["odd"]))
    assert hits and {h.category for h in hits} == {"odd"}
    assert store.search_vector(vectors[0], 10, filters=Filters(sources=["nope"])) == []


def test_images_round_trip_and_image_search(store):
    rng = np.random.default_rng(4)
    vec = unit(rng.normal(size=384))
    store.write([], [], [ImageRow(id="img1", doc_id=None, caption="a frog", path="/x/frog.png", embedding=vec)])
    hit = store.search_vector(vec, 1, kind="image")[0]
    assert (hit.kind, hit.id, hit.text) == ("image", "img1", "a frog")
    assert store.get_image("img1")["path"] == "/x/frog.png"


@pytest.mark.parametrize(
    "bad",
    [
        ChunkRow("doc0", 0, "fine text", np.ones(383, dtype=np.float32)),
        ChunkRow("doc0", 1, "   ", np.ones(384, dtype=np.float32)),
        ChunkRow("doc0", 2, "nan vector", np.full(384, np.nan, dtype=np.float32)),
    ],
    ids=["wrong-dimension", "empty-text", "nan"],
)
def test_bad_rows_raise_and_write_nothing(store, bad):
    good_doc = DocumentRow(id="doc0", source="t", title="T", content_hash="h", n_chunks=3)
    good = ChunkRow("doc0", 0, "good", unit(np.ones(384)))
    with pytest.raises(StoreInputError):
        store.write([good_doc], [good, bad])
    assert store.counts() == {"documents": 0, "chunks": 0, "images": 0}


def test_bad_k_and_empty_query_are_input_errors(store):
    with pytest.raises(StoreInputError):
        store.search_vector(np.ones(384), 0)
    with pytest.raises(StoreInputError):
        store.search_text("  ", 5)


def test_unreachable_database_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="cannot connect"):
        Store(f"postgresql://postgres@/postgres?host={tmp_path}")


def test_document_metadata_is_stored_as_a_json_object(store):
    doc = DocumentRow(id="m1", source="t", title="T", content_hash="h", n_chunks=0,
                      metadata={"description": "a frog", "tags": [1, 2]})
    store.write([doc])
    with store.pool.connection() as conn:
        kind, description = conn.execute(
            "SELECT jsonb_typeof(metadata), metadata->>'description' FROM documents WHERE id = 'm1'"
        ).fetchone()
    assert (kind, description) == ("object", "a frog")
    assert store.get_document("m1")["metadata"] == {"description": "a frog", "tags": [1, 2]}


def table_rows(store) -> dict[str, list]:
    """Every stored row of the three tables (with the generated tsvector), for comparing two writes."""
    with store.pool.connection() as conn:
        return {
            "documents": conn.execute("SELECT id, source, title, url, license, category, content_hash, n_chunks,"
                                      " metadata FROM documents ORDER BY id").fetchall(),
            "chunks": conn.execute("SELECT id, doc_id, ord, text, tsv::text, embedding::text FROM chunks ORDER BY id").fetchall(),
            "images": conn.execute("SELECT id, doc_id, caption, path, sha256, width, height, embedding::text FROM images"
                                   " ORDER BY id").fetchall(),
        }


def chunk_change_ops(store) -> list[tuple]:
    with store.pool.connection() as conn:
        return conn.execute("SELECT tbl, op, n_rows FROM chunk_changes ORDER BY id").fetchall()


def test_new_documents_are_copied_straight_in_and_give_the_rows_of_the_upsert(store, database_url):
    rng = np.random.default_rng(5)
    docs, chunks = make_docs(40, 3, unit(rng.normal(size=(120, 384))))
    images = [ImageRow(f"img{i}", f"doc{i}", f"caption {i}", f"/p/{i}.png", unit(rng.normal(size=384)), "ab", 4, 5)
              for i in range(0, 40, 4)]
    stats = store.write(docs, chunks, images)
    assert (stats.documents, stats.chunks, stats.images, stats.deleted_chunks) == (40, 120, 10, 0)
    # one COPY per table: the chunks' statement-level trigger saw all 120 rows at once (the BM25 index moves on)
    assert chunk_change_ops(store) == [("chunks", "INSERT", 120)]
    copied = table_rows(store)
    # the same rows through the upsert: one document of the batch is stored already, so the batch is staged
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE documents CASCADE")
    with Store(database_url) as other:
        other.write(docs[:1], chunks[:3])
        again = other.write(docs, chunks, images)
    assert (again.documents, again.chunks, again.images) == (39, 117, 10)
    assert table_rows(store) == copied
    assert store.write(docs, chunks, images) == type(stats)()  # and a third write changes nothing


def test_a_failing_copy_leaves_no_half_written_batch(store):
    rng = np.random.default_rng(6)
    docs, chunks = make_docs(5, 2, unit(rng.normal(size=(10, 384))))
    chunks[7].text = "a NUL \x00 byte PostgreSQL text cannot hold"  # passes validation, fails in the chunks' COPY
    with pytest.raises(psycopg.Error):
        store.write(docs, chunks)  # the documents' COPY had succeeded in the same transaction
    assert store.counts() == {"documents": 0, "chunks": 0, "images": 0}
    assert chunk_change_ops(store) == []


def test_a_concurrent_writer_of_the_same_new_document_makes_the_copy_fall_back_to_the_upsert(store, database_url):
    import threading

    rng = np.random.default_rng(7)
    docs, chunks = make_docs(3, 2, unit(rng.normal(size=(6, 384))))
    result = {}
    with psycopg.connect(database_url) as other:  # holds doc1, uncommitted: invisible to the writer's check
        other.execute("INSERT INTO documents (id, source, title, content_hash, n_chunks) VALUES ('doc1', 'x', 'Old', 'old', 0)")
        writer = threading.Thread(target=lambda: result.update(stats=store.write(docs, chunks)))
        writer.start()
        deadline = time.monotonic() + 30
        while not waiting_on_a_lock(database_url):  # the writer's COPY waits on doc1's primary key
            assert time.monotonic() < deadline and writer.is_alive(), "the writer never waited for the other one"
            time.sleep(0.05)
        other.commit()
    writer.join(30)
    assert (result["stats"].documents, result["stats"].chunks) == (3, 6)  # doc1 updated, two inserted
    assert store.counts() == {"documents": 3, "chunks": 6, "images": 0}
    assert store.document_hashes(["doc0", "doc1", "doc2"]) == {"doc0": "h0", "doc1": "h1", "doc2": "h2"}


def waiting_on_a_lock(database_url: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0] > 0
