"""BM25 over the store's chunks (ray_app/store/lexical.py) and the frozen hybrid fusion, on a real Postgres."""

from __future__ import annotations

import json
import math

import numpy as np
import psycopg

from ray_app.store import ChunkRow, DocumentRow, SearchHit, Store
from ray_app.store.fusion import FusionParams
from ray_app.store.rows import fuse_convex

TEXTS = {  # after Postgres' english parser: stems, no stop words
    "short_cat": "Cats purr.",
    "cat_heavy": "Cats, cats and cats chase mice.",
    "dog": "Dogs bark at cats.",
    "long_mice": "Dogs chase cats and mice in the garden every single day of a long and sunny summer.",
    "garden": "A garden with roses.",
}


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 384))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def write_texts(store: Store, texts: dict[str, str], version: str = "v1", source: str = "test") -> None:
    vectors = unit_vectors(len(texts))
    docs = [DocumentRow(id=name, source=source, title=name, content_hash=f"{version}:{text}", n_chunks=1)
            for name, text in texts.items()]
    chunks = [ChunkRow(name, 0, text, vectors[i]) for i, (name, text) in enumerate(texts.items())]
    store.write(docs, chunks)


def bm25_by_hand(store: Store, query: str) -> dict[str, float]:
    """Okapi BM25 (k1 1.2, b 0.75, Lucene IDF) computed from Postgres' own lexeme counts, chunk by chunk."""
    with psycopg.connect(store.url) as conn:
        rows = conn.execute("SELECT c.doc_id, u.lexeme, cardinality(u.positions) FROM chunks c, unnest(c.tsv) u").fetchall()
        terms = [r[0] for r in conn.execute("SELECT lexeme FROM unnest(to_tsvector('english', %s))", (query,))]
    tf: dict[str, dict[str, int]] = {}
    for doc, lexeme, count in rows:
        tf.setdefault(doc, {})[lexeme] = count
    n = len(tf)
    avgdl = sum(sum(t.values()) for t in tf.values()) / n
    scores = {}
    for doc, counts in tf.items():
        length, score = sum(counts.values()), 0.0
        for term in terms:
            df = sum(term in c for c in tf.values())
            if term in counts:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                f = counts[term]
                score += idf * f * 2.2 / (f + 1.2 * (1 - 0.75 + 0.75 * length / avgdl))
        if score > 0:
            scores[doc] = score
    return scores


def test_bm25_ranks_hand_made_documents_exactly(store):
    write_texts(store, TEXTS)
    hits = store.search_text("cats and mice", 10)
    # "mice" is in 2 of 5 chunks, "cat" in 4: the chunks with mice lead; among them the short one that
    # says "cats" three times beats the long one; among the rest, the shorter chunk wins.
    assert [h.doc_id for h in hits] == ["cat_heavy", "long_mice", "short_cat", "dog"]
    expected = bm25_by_hand(store, "cats and mice")
    assert {h.doc_id: round(h.score, 4) for h in hits} == {d: round(s, 4) for d, s in expected.items()}
    assert hits[0].text == TEXTS["cat_heavy"] and hits[0].title == "cat_heavy" and hits[0].kind == "chunk"


def test_bm25_idf_prefers_the_rare_term_and_length_normalisation_the_short_chunk(store):
    write_texts(store, TEXTS)
    index = store.lexical_index()
    assert index.idf("garden") > index.idf("cat") > 0  # 2 of 5 chunks vs 4 of 5
    # one "garden" in a 2-term chunk beats three "cats" in a 5-term chunk: IDF outweighs term frequency
    assert store.search_text("cats garden", 1)[0].doc_id == "garden"
    # "garden" once in the short chunk and once in the long one: length normalisation decides
    assert [h.doc_id for h in store.search_text("garden", 5)] == ["garden", "long_mice"]
    assert store.search_text("the and of", 5) == []  # only stop words: nothing to match
    # "dog" once in a 3-term chunk and once in the 11-term one
    assert [h.doc_id for h in store.search_text("dogs", 5)] == ["dog", "long_mice"]


def test_statistics_follow_rewrites_and_deletes(store):
    write_texts(store, TEXTS)
    first = store.lexical_index()
    assert first.n == 5 and first.df[first.vocabulary["mice"]] == 2
    write_texts(store, TEXTS)  # the same rows again: nothing changed, the index is not rebuilt
    store.search_text("mice", 3)
    assert store.lexical_index(first.version) is first and store._lexical is first

    # a re-ingested document whose text changed: "mice" leaves it, "hedgehog" arrives
    write_texts(store, {**TEXTS, "cat_heavy": "Cats chase a hedgehog."}, version="v2")
    assert [h.doc_id for h in store.search_text("hedgehog", 3)] == ["cat_heavy"]
    assert [h.doc_id for h in store.search_text("mice", 3)] == ["long_mice"]
    index = store._lexical
    assert index is not first and index.df[index.vocabulary["mice"]] == 1 and index.n == 5

    # a deleted document (its chunks go by cascade): N, df and the average length follow
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute("DELETE FROM documents WHERE id = 'long_mice'")
    assert store.search_text("mice", 3) == []
    index = store._lexical
    assert index.n == 4 and "long_mice" not in index.ids
    assert math.isclose(index.avgdl, np.mean([2, 3, 3, 2]), rel_tol=1e-6)  # cat purr | cat chase hedgehog | ...
    assert math.isclose(store.search_text("garden", 3)[0].score, bm25_by_hand(store, "garden")["garden"], rel_tol=1e-5)


def test_text_search_filters_by_source(store):
    write_texts(store, TEXTS)
    write_texts(store, {"other_cat": "Cats purr loudly."}, source="other")
    from ray_app.store import Filters

    assert [h.doc_id for h in store.search_text("purr", 5, Filters(sources=["other"]))] == ["other_cat"]
    assert {h.doc_id for h in store.search_text("purr", 5)} == {"short_cat", "other_cat"}


def test_the_frozen_fusion_parameters_are_loaded(database_url, tmp_path, monkeypatch):
    import ray_app.store.fusion as fusion

    frozen = FusionParams(method="minmax", text_weight=0.3, depth=50, chosen_on={"split": "dev"})
    path = fusion.save_fusion_params(frozen, tmp_path / "fusion.json")
    monkeypatch.setattr(fusion, "FUSION_FILE", path)
    assert json.loads(path.read_text())["method"] == "minmax"
    with Store(database_url) as store:
        assert store.fusion == frozen and store.fusion.chosen_on == {"split": "dev"}
        write_texts(store, TEXTS)
        vector = unit_vectors(5)[1]  # the vector of "cat_heavy"
        hits = store.search_hybrid("garden", vector, 2)
        expected = frozen.fuse(store.search_vector(vector, 50), store.search_text("garden", 50), 2)
        assert [h.id for h in hits] == [h.id for h in expected] and hits[0].score == expected[0].score
    from edge.index import EdgeIndex, write_index

    write_index(tmp_path / "index.sqlite", [{"id": "d", "source": "s", "title": "t"}],
                [{"id": "d:0", "doc_id": "d", "text": "cats", "embedding": unit_vectors(1)[0]}])
    assert EdgeIndex(tmp_path / "index.sqlite").fusion == frozen  # the edge runtime fuses alike


def hits(scored: dict[str, float]) -> list[SearchHit]:
    return [SearchHit("chunk", i, i, i, i, s) for i, s in scored.items()]


def test_convex_fusion_of_normalised_scores():
    vector = hits({"a": 0.9, "b": 0.8, "c": 0.1})
    text = hits({"c": 30.0, "b": 20.0, "d": 10.0})
    # text weight 0: the vector order, with the text-only hit last
    assert [h.id for h in fuse_convex([vector, text], 4, (1.0, 0.0))] == ["a", "b", "c", "d"]
    # equal weights: b is high in both lists and wins
    assert fuse_convex([vector, text], 4, (0.5, 0.5))[0].id == "b"
    assert [h.id for h in fuse_convex([vector, text], 4, (0.0, 1.0), "minmax")] == ["c", "b", "a", "d"]
    assert [h.id for h in fuse_convex([vector, []], 2, (0.5, 0.5))] == ["a", "b"]  # an empty list adds nothing
    # a BM25 list of one hit (floor 0: what a chunk without the query's terms scores) still lifts it
    one_hit = hits({"c": 5.0})
    assert [h.id for h in fuse_convex([vector, one_hit], 3, (0.5, 0.5))] == ["a", "b", "c"]  # no floor: no lift
    assert [h.id for h in fuse_convex([vector, one_hit], 3, (0.5, 0.5), floors=(None, 0.0))] == ["a", "c", "b"]
    assert [h.id for h in FusionParams(method="zscore", text_weight=0.5).fuse(vector, one_hit, 3)] == ["a", "c", "b"]
    # sharpness: the BM25 list whose best hit stands far above the rest outweighs a flat vector list
    flat, standout = hits({"a": 0.60, "b": 0.51, "c": 0.50, "d": 0.2}), hits({"c": 30.0, "e": 2.0, "a": 1.0})
    assert [h.id for h in fuse_convex([flat, standout], 2, (0.9, 0.1), floors=(None, 0.0))] == ["a", "c"]
    assert [h.id for h in fuse_convex([flat, standout], 2, (0.9, 0.1), floors=(None, 0.0), sharpness=2)] == ["c", "a"]
    params = FusionParams(method="rrf", text_weight=0.0)
    assert [h.id for h in params.fuse(vector, text, 3)] == ["a", "b", "c"]


def test_bench_lexical_replicates_the_store_with_the_same_statistics(store, tmp_path):
    from ray_app.benchmarks.lexical import LexicalBenchConfig, bench_lexical, replicate
    from ray_app.store.lexical import build_lexical_index

    write_texts(store, TEXTS)
    result = bench_lexical(LexicalBenchConfig(sizes=[20], write=False), store, ["cats and mice", "dogs in a garden"])
    small, big = result["sizes"]
    assert (small["chunks"], big["chunks"]) == (5, 20) and big["postings"] == 4 * small["postings"]
    assert big["terms"] == small["terms"] and result["store_chunks"] == 5 and len(result["load_average"]["end"]) == 3
    assert result["in_postgres"]["same_top10_as_index"] == 1.0  # the SQL variant computes the same BM25
    with store.chunk_terms() as (_, stream):
        chunks = list(stream)
    one, four = build_lexical_index(chunks), build_lexical_index(replicate(chunks, 20))
    terms = store.query_terms("cats and mice")
    # IDF's +0.5 terms move the scores when df and N grow alike (a lot at N = 5); the ranking stays
    ranked_one, ranked_four = one.search(terms, 3), four.search(terms, 12)[::4]
    assert [i for i, _ in ranked_one] == [i.split("#")[0] for i, _ in ranked_four]
