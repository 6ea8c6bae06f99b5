"""BM25 at scale: build time, memory and query latency of the in-memory lexical index
(``ray_app/store/lexical.py``) at the store's size and at the store's chunks replicated to 1M.

    prism bench lexical --json                         # writes docs/reports/lexical-scale.{json,md}
    python -m ray_app.benchmarks.lexical --sizes 10000 100000 1000000

Replicating a corpus R times keeps the average length and, but for IDF's +0.5 terms, every term's IDF
(df and N both grow R times), so the posting weights are nearly the store's and each posting list is R
times longer: the
query cost of a corpus R times larger whose vocabulary did not grow, an upper bound for real text.
Queries are sentences from the middle of the store's chunks, as in the masked-sentence set of
``prism eval retrieval`` (long: ~15 terms after stop words), tokenised by Postgres once; latency here is the index alone (``LexicalIndex.search``, top 40), the part
of ``Store.search_text`` that grows with the corpus (the two Postgres round trips around it do not).

The alternative kept inside Postgres is measured at the store's size too (``in_postgres``): the same
BM25 in one SQL statement over the chunks that hold a query term (GIN), each one's ``tsv`` unnested for
term frequencies, with N, the average length and every df handed in as a terms table would keep them
(their upkeep not counted): it returns the same ranking, and its cost grows with the matching chunks.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ray_app.entrypoints import int_at_least, job_parser, run_job
from ray_app.errors import InputError
from ray_app.reports import load_average, write_report
from ray_app.store.lexical import ChunkTerms, build_lexical_index

PROG = "python -m ray_app.benchmarks.lexical"
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass
class LexicalBenchConfig:
    """What `prism bench lexical` measures.

    Attributes:
        sizes: index sizes in chunks (the store's chunks replicated up to each; the store's own size is always measured).
        queries: timed queries per size.
        k: results per query (the hybrid fusion's depth).
        out: folder for ``lexical-scale.{json,md}``.
        write: write the report files.
    """

    sizes: list[int] = field(default_factory=lambda: [100_000, 1_000_000])
    queries: int = 200
    k: int = 40
    out: Path = Path("docs/reports")
    write: bool = True


def replicate(chunks: list[ChunkTerms], size: int) -> list[ChunkTerms]:
    """``size`` chunks: the list repeated (ids suffixed ``#r``), cut at ``size``."""
    out = []
    for r in range(-(-size // len(chunks))):
        out += [ChunkTerms(f"{c.id}#{r}", c.source, c.category, c.lexemes, c.counts) for c in chunks]
    return out[:size]


def middle_sentences(store, n: int) -> list[str]:
    """The middle sentence of ``n`` chunks spread over the store (chunks of three sentences or more)."""
    with store.pool.connection() as conn:
        texts = [r[0] for r in conn.execute("SELECT text FROM chunks ORDER BY id")]
    out = []
    for text in texts[:: max(1, len(texts) // (4 * n))]:
        sentences = [x for x in _SENTENCE.split(text) if x.strip()]
        if len(sentences) >= 3:
            out.append(sentences[len(sentences) // 2])
    return out[:n]


def measure(chunks: list[ChunkTerms], queries: list[dict[str, int]], k: int) -> dict:
    """Build the index over ``chunks`` and time ``queries`` against it."""
    started = time.perf_counter()
    index = build_lexical_index(chunks)
    build_s = time.perf_counter() - started
    for terms in queries[:5]:  # warm
        index.search(terms, k)
    times = []
    for terms in queries:
        t0 = time.perf_counter()
        index.search(terms, k)
        times.append((time.perf_counter() - t0) * 1000)
    matrix = index.weights
    return {"chunks": index.n, "terms": len(index.vocabulary), "postings": int(matrix.nnz),
            "matrix_mb": round((matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes) / 2**20, 1),
            "build_s": round(build_s, 2), "query_p50_ms": round(float(np.percentile(times, 50)), 2),
            "query_p95_ms": round(float(np.percentile(times, 95)), 2), "queries": len(times)}


_SQL_BM25 = """
WITH q AS (SELECT * FROM unnest(%(lexemes)s::text[], %(idf)s::float8[], %(qtf)s::float8[]) AS t(lexeme, idf, qtf)),
cand AS (SELECT c.id, c.tsv FROM chunks c WHERE c.tsv @@ %(tsquery)s::tsquery)
SELECT cand.id, sum(q.qtf * q.idf * t.tf * (%(k1)s + 1)
                   / (t.tf + %(k1)s * (1 - %(b)s + %(b)s * l.len / %(avgdl)s))) AS score
FROM cand
CROSS JOIN LATERAL (SELECT sum(cardinality(positions)) AS len FROM unnest(cand.tsv)) l
CROSS JOIN LATERAL (SELECT u.lexeme, cardinality(u.positions) AS tf FROM unnest(cand.tsv) u) t
JOIN q ON q.lexeme = t.lexeme
GROUP BY cand.id ORDER BY score DESC, cand.id LIMIT %(k)s
"""


def measure_in_postgres(store, index, queries: list[dict[str, int]], k: int) -> dict:
    """The same BM25 as one SQL statement (statistics handed in); p50/p95 and agreement with the index."""
    times, same = [], 0
    with store.pool.connection() as conn:
        for terms in queries:
            known = [t for t in terms if t in index.vocabulary]
            params = {"lexemes": known, "idf": [index.idf(t) for t in known], "qtf": [float(terms[t]) for t in known],
                      "tsquery": " | ".join("'" + t.replace("'", "''") + "'" for t in known) or "''",
                      "k1": index.k1, "b": index.b, "avgdl": index.avgdl, "k": k}
            t0 = time.perf_counter()
            rows = conn.execute(_SQL_BM25, params).fetchall() if known else []
            times.append((time.perf_counter() - t0) * 1000)
            same += [r[0] for r in rows[:10]] == [i for i, _ in index.search(terms, k)[:10]]
    return {"chunks": index.n, "query_p50_ms": round(float(np.percentile(times, 50)), 2),
            "query_p95_ms": round(float(np.percentile(times, 95)), 2), "queries": len(times),
            "same_top10_as_index": round(same / max(len(times), 1), 4)}


def bench_lexical(config: LexicalBenchConfig, store=None, texts: list[str] | None = None) -> dict:
    """Measure the store's own index and replicated ones at ``config.sizes``.

    Args:
        texts: the query texts (default: ``config.queries`` masked-sentence queries from the store).

    Raises:
        InputError: the store has no chunks.
    """
    from ray_app.store import get_store

    store = store or get_store()
    load_start = load_average()
    with store.chunk_terms() as (_, stream):
        chunks = [ChunkTerms(c.id, c.source, c.category, list(c.lexemes), list(c.counts)) for c in stream]
    if not chunks:
        raise InputError("the store has no chunks: run `prism corpus build wiki` and `prism ingest` first")
    texts = texts or middle_sentences(store, config.queries) or ["largest planet in the solar system"]
    queries = [t for t in (store.query_terms(text) for text in texts) if t]
    rows = [measure(chunks, queries, config.k)]
    in_postgres = measure_in_postgres(store, store.lexical_index(), queries, config.k)
    for size in sorted(s for s in config.sizes if s > len(chunks)):
        rows.append(measure(replicate(chunks, size), queries, config.k))
    return {"store_chunks": len(chunks), "query_terms_mean": round(float(np.mean([len(q) for q in queries])), 1),
            "k": config.k, "sizes": rows, "in_postgres": in_postgres,
            "load_average": {"start": load_start, "end": load_average()}}


def render_markdown(result: dict) -> str:
    lines = ["# BM25 index at scale", "",
             f"Generated by `{result['command']}`: the store's {result['store_chunks']:,} chunks, then replicated "
             "(same average length, nearly the same IDF, posting lists R times longer: an upper bound on a real corpus of that "
             f"size). {result['sizes'][0]['queries']} middle sentences of chunks as queries ({result['query_terms_mean']} terms on "
             f"average), top {result['k']}, index alone (`LexicalIndex.search`). Load average at start "
             f"{result['load_average']['start']}, at end {result['load_average']['end']}.", "",
             "| chunks | terms | postings | matrix MB | build s | query p50 ms | query p95 ms |",
             "|---|---|---|---|---|---|---|"]
    for r in result["sizes"]:
        lines.append(f"| {r['chunks']:,} | {r['terms']:,} | {r['postings']:,} | {r['matrix_mb']} | {r['build_s']} | "
                     f"{r['query_p50_ms']} | {r['query_p95_ms']} |")
    pg = result.get("in_postgres")
    if pg:
        lines += ["", f"The same BM25 inside Postgres (one SQL statement over the chunks holding a query term, "
                  f"statistics handed in) at {pg['chunks']:,} chunks: p50 {pg['query_p50_ms']} ms, p95 "
                  f"{pg['query_p95_ms']} ms; same top 10 as the index for {pg['same_top10_as_index']:.1%} of the "
                  "queries. Its cost grows with the chunks that hold any query term, so it is not the default."]
    lines += ["", "The numbers are in `lexical-scale.json` next to this file.", ""]
    return "\n".join(lines)


def describe(result: dict) -> str:
    return "\n".join(f"{r['chunks']:>9,} chunks: build {r['build_s']} s, {r['matrix_mb']} MB, "
                     f"query p50 {r['query_p50_ms']} ms p95 {r['query_p95_ms']} ms" for r in result["sizes"])


def run(config: LexicalBenchConfig) -> dict:
    result = bench_lexical(config)
    if config.write:
        command = "prism bench lexical" + ("" if config.sizes == LexicalBenchConfig().sizes
                                           else " --sizes " + " ".join(map(str, config.sizes)))
        write_report(config.out, "lexical-scale", result, render_markdown, command=command)
    return result


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    d = LexicalBenchConfig()
    p = job_parser(prog, __doc__)
    p.add_argument("--sizes", type=int_at_least(1), nargs="+", default=d.sizes,
                   help="Index sizes in chunks (the store's chunks replicated); the store's own size always runs.")
    p.add_argument("--queries", type=int_at_least(1), default=d.queries, help="Timed queries per size.")
    p.add_argument("--k", type=int_at_least(1), default=d.k, help="Results per query.")
    p.add_argument("--out", type=Path, default=d.out, help="Where lexical-scale.{json,md} are written.")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=d.write, help="Write the report files.")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``prism bench lexical`` / ``python -m ray_app.benchmarks.lexical``."""
    return run_job(build_parser(prog or PROG), argv, lambda args: run(LexicalBenchConfig(**args)), describe)


if __name__ == "__main__":
    main()
