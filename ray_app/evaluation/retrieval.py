"""Retrieval evaluation on the wiki corpus: queries are the Wikidata short descriptions, the target
is their article. R@1, R@10, MRR@10 and nDCG@10 for vector, text and hybrid search.

    prism corpus build wiki && prism ingest $PRISM_HOME/data/corpus/wiki
    prism eval retrieval --json            # writes docs/reports/retrieval.{json,md}
    python -m ray_app.evaluation.retrieval --json

Ranks are over distinct documents (a document's best chunk counts), so a query scores 1 at rank r
when its article is the r-th distinct document returned.

Hybrid search weighs the full-text ranking by ``rrf_text_weight``. The report also sweeps that
weight over ``TEXT_WEIGHTS`` on two halves of the queries (even and odd positions): the dev half
is where the default was chosen, the test half shows whether the choice holds on unseen queries.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ray_app.entrypoints import int_at_least, job_parser, run_job
from ray_app.errors import InputError
from ray_app.reports import write_report

MODES = ("vector", "text", "hybrid")
TEXT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEPTH = 10
PROG = "python -m ray_app.evaluation.retrieval"
# The description, whether metadata holds a JSON object or (older writes) that object encoded as a JSON string.
_DESCRIPTION = ("(CASE jsonb_typeof(metadata) WHEN 'string' THEN (metadata #>> '{}')::jsonb ELSE metadata END)"
                " ->> 'description'")


@dataclass
class RetrievalEvalConfig:
    """What `prism eval retrieval` evaluates and where it writes.

    Attributes:
        queries: evaluate a deterministic spread of this many queries (None: all).
        depth: candidates per list fused by hybrid search (None: the store's default).
        out: folder for ``retrieval.{json,md}`` (``retrieval-onnx-int8.*`` with the INT8 embedder).
        write: write the report files.
        corpus_command: how the corpus was built, quoted in the report.
    """

    queries: int | None = None
    depth: int | None = None
    out: Path = Path("docs/reports")
    write: bool = True
    corpus_command: str | None = None


@dataclass
class Query:
    text: str
    doc_id: str


def load_queries(store, limit: int | None = None) -> list[Query]:
    """One query per wiki document in the store with a non-empty description, sorted by document id."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            f"SELECT id, {_DESCRIPTION} FROM documents WHERE source = 'wiki'"
            f" AND coalesce({_DESCRIPTION}, '') <> '' ORDER BY id"
        ).fetchall()
    queries = [Query(text, doc_id) for doc_id, text in rows]
    if limit is not None and limit < len(queries):
        step = len(queries) / limit  # a deterministic spread over the whole corpus
        queries = [queries[int(i * step)] for i in range(limit)]
    return queries


def distinct_docs(hits) -> list[str]:
    seen: list[str] = []
    for hit in hits:
        if hit.doc_id not in seen:
            seen.append(hit.doc_id)
    return seen


def rank_of(doc_id: str, docs: list[str]) -> int | None:
    return docs.index(doc_id) + 1 if doc_id in docs[:DEPTH] else None


def metrics(ranks: list[int | None]) -> dict:
    """R@1, R@10, MRR@10 and nDCG@10 (one relevant document per query)."""
    n = max(len(ranks), 1)
    return {
        "r_at_1": round(sum(r == 1 for r in ranks) / n, 4),
        "r_at_10": round(sum(r is not None for r in ranks) / n, 4),
        "mrr": round(sum(1 / r for r in ranks if r) / n, 4),
        "ndcg_at_10": round(sum(1 / math.log2(r + 1) for r in ranks if r) / n, 4),
    }


def search_ranks(store, queries: list[Query], vectors: np.ndarray, depth: int) -> dict[str, list]:
    """The target's distinct-document rank per query and mode (None: not in the top 10).

    Hybrid is what ``Store.search_hybrid`` computes (weighted RRF over ``depth`` vector and
    ``depth`` text candidates); both lists are fetched once and reused for the single-mode
    rankings and for each swept text weight (keys ``hybrid@<weight>``).
    """
    ranks: dict[str, list] = {m: [] for m in (*MODES, *(f"hybrid@{w}" for w in TEXT_WEIGHTS))}
    fetch = 4 * DEPTH  # chunks kept so that 10 distinct documents remain
    for query, vector in zip(queries, vectors, strict=True):
        vector_hits = store.search_vector(vector, max(depth, fetch))
        text_hits = store.search_text(query.text, max(depth, fetch))
        results = {
            "vector": vector_hits[:fetch],
            "text": text_hits[:fetch],
            "hybrid": store.fuse_hybrid(vector_hits[:depth], text_hits[:depth], fetch),
        }
        for weight in TEXT_WEIGHTS:
            results[f"hybrid@{weight}"] = store.fuse_hybrid(vector_hits[:depth], text_hits[:depth], fetch, weight)
        for mode, hits in results.items():
            ranks[mode].append(rank_of(query.doc_id, distinct_docs(hits)))
    return ranks


def weight_sweep(ranks: dict[str, list]) -> dict:
    """R@10 and MRR per text weight on the dev (even) and test (odd) halves of the queries."""
    halves = {"dev": slice(0, None, 2), "test": slice(1, None, 2)}
    sweep = {name: {str(w): metrics(ranks[f"hybrid@{w}"][part]) for w in TEXT_WEIGHTS} for name, part in halves.items()}
    for name, part in halves.items():
        sweep[name]["vector"] = metrics(ranks["vector"][part])
    best = max(TEXT_WEIGHTS, key=lambda w: (sweep["dev"][str(w)]["r_at_10"], sweep["dev"][str(w)]["mrr"]))
    return {"weights": list(TEXT_WEIGHTS), "halves": sweep, "best_on_dev": best}


def evaluate_retrieval(store=None, limit: int | None = None, depth: int | None = None) -> dict:
    """Run the evaluation against the store's wiki documents.

    Args:
        store: the store (default: the process-wide one).
        limit: evaluate a deterministic spread of this many queries (default: all).
        depth: candidates per list fused by hybrid search (default: the store's).

    Raises:
        InputError: no wiki documents with descriptions in the store.
    """
    from ray_app.models.text import get_text_embedder
    from ray_app.store import get_store

    store = store or get_store()
    queries = load_queries(store, limit)
    if not queries:
        raise InputError("no wiki documents in the store: run `prism corpus build wiki` and `prism ingest` first")
    started = time.perf_counter()
    embedder = get_text_embedder()
    vectors = embedder.embed([q.text for q in queries])
    depth = depth or 4 * 4 * DEPTH  # Store.search_hybrid's default for k = 40
    ranks = search_ranks(store, queries, vectors, depth)
    with store.pool.connection() as conn:
        docs, chunks = conn.execute(
            "SELECT count(*), (SELECT count(*) FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE d.source = 'wiki')"
            " FROM documents WHERE source = 'wiki'"
        ).fetchone()
    result = {
        "corpus": {"source": "wiki", "documents": docs, "chunks": chunks, "full": docs >= 10_033},
        "queries": len(queries),
        "distinct_query_texts": len({q.text for q in queries}),
        "modes": {mode: metrics(ranks[mode]) for mode in MODES},
        "hybrid_text_weight": store.settings.rrf_text_weight,
        "text_weight_sweep": weight_sweep(ranks),
        "hybrid_depth": depth,
        "backend": embedder.backend,
        "seconds": round(time.perf_counter() - started, 2),
    }
    result["hybrid_not_worse_than_vector_r10"] = result["modes"]["hybrid"]["r_at_10"] >= result["modes"]["vector"]["r_at_10"]
    return result


def render_markdown(result: dict) -> str:
    """The Markdown page for ``retrieval.md`` (the command that ran is ``result["command"]``)."""
    command = result["command"]
    corpus = result["corpus"]
    scope = ("the full wiki corpus" if corpus["full"] else
             f"a deterministic subset of the wiki corpus ({corpus['documents']:,} of 10,033 articles)")
    lines = [
        "# Retrieval evaluation",
        "",
        f"Generated by `{command}` on {scope}: {corpus['documents']:,} documents, {corpus['chunks']:,} chunks, "
        f"embedded (documents and queries) with the {result.get('backend', 'onnx')} backend.",
        *([f"Corpus built and loaded with `{result['corpus_command']}`."] if result.get("corpus_command") else []),
        f"Queries: the {result['queries']:,} Wikidata short descriptions of those articles "
        f"({result['distinct_query_texts']:,} distinct texts; repeated descriptions such as "
        "\"Family of birds\" cannot single out one article). Target: the described article. Ranks count "
        "distinct documents.",
        "",
        "| mode | R@1 | R@10 | MRR@10 | nDCG@10 |",
        "|---|---|---|---|---|",
    ]
    for mode, m in result["modes"].items():
        lines.append(f"| {mode} | {m['r_at_1']:.3f} | {m['r_at_10']:.3f} | {m['mrr']:.3f} | {m['ndcg_at_10']:.3f} |")
    verdict = "does not lose" if result["hybrid_not_worse_than_vector_r10"] else "LOSES"
    weight = result.get("hybrid_text_weight", 1.0)
    lines += ["", f"Hybrid (reciprocal-rank fusion of vector and full-text results, text ranking weighted {weight}) "
              f"{verdict} to vector on R@10."]
    sweep = result.get("text_weight_sweep")
    if sweep:
        lines += ["", "Text weight in the fusion (vector weighs 1), R@10 / MRR@10 on the two halves of the queries "
                  f"(even positions: dev, where the default was chosen; odd: test). Best on dev: {sweep['best_on_dev']}.",
                  "", "| text weight | dev R@10 | dev MRR | test R@10 | test MRR |", "|---|---|---|---|---|"]
        for key in [*map(str, sweep["weights"]), "vector"]:
            dev, test = sweep["halves"]["dev"][key], sweep["halves"]["test"][key]
            label = "vector only" if key == "vector" else key
            lines.append(f"| {label} | {dev['r_at_10']:.3f} | {dev['mrr']:.3f} | {test['r_at_10']:.3f} | {test['mrr']:.3f} |")
    lines += ["", f"The numbers are in `{report_name(result)}.json` next to this file.", ""]
    return "\n".join(lines)


def report_name(result: dict) -> str:
    """``retrieval``; ``retrieval-onnx-int8`` for the INT8 embedder, whose vectors differ."""
    backend = result.get("backend", "onnx")
    return "retrieval" if backend in ("onnx", "torch") else f"retrieval-{backend}"


def describe(result: dict) -> str:
    """One line per search mode (what the job prints without ``--json``)."""
    return "\n".join(f"{mode:>7}: R@1 {m['r_at_1']:.3f}  R@10 {m['r_at_10']:.3f}  MRR {m['mrr']:.3f}  "
                     f"nDCG@10 {m['ndcg_at_10']:.3f}" for mode, m in result["modes"].items())


def eval_retrieval(config: RetrievalEvalConfig) -> dict:
    """Evaluate and (with ``config.write``) write the report; returns the result.

    Raises:
        InputError: no wiki documents with descriptions in the store.
    """
    result = evaluate_retrieval(limit=config.queries, depth=config.depth)
    if config.corpus_command:
        result["corpus_command"] = config.corpus_command
    command = "prism eval retrieval" + (f" --queries {config.queries}" if config.queries else "") + (
        f" --depth {config.depth}" if config.depth else "")
    if report_name(result) != "retrieval":
        command = f"PRISM_EMBED_BACKEND={result['backend']} {command}"
    if config.write:
        write_report(config.out, report_name(result), result, render_markdown, command=command)
    return result


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The job's arguments; every default is :class:`RetrievalEvalConfig`'s."""
    d = RetrievalEvalConfig
    p = job_parser(prog, __doc__)
    p.add_argument("--queries", type=int_at_least(1), default=d.queries, help="Evaluate a spread of N queries (default all).")
    p.add_argument("--depth", type=int_at_least(1), default=d.depth, help="Candidates per list fused by hybrid search.")
    p.add_argument("--out", type=Path, default=d.out, help="Where retrieval.{json,md} are written.")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=d.write, help="Write the report files.")
    p.add_argument("--corpus-command", default=d.corpus_command, help="How the corpus was built (for the report).")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``prism eval retrieval`` / ``python -m ray_app.evaluation.retrieval``: evaluate, write the report, print the result."""
    return run_job(build_parser(prog or PROG), argv, lambda args: eval_retrieval(RetrievalEvalConfig(**args)), describe)


if __name__ == "__main__":
    main()
