"""Retrieval evaluation on the ingested corpus: four query sets, each split dev/test by a fixed hash of
the target document, R@1, R@10, MRR@10 and nDCG@10 for vector, text (BM25) and hybrid search.

    prism corpus build wiki && prism corpus build stamps && prism ingest $PRISM_HOME/data/corpus
    prism eval retrieval --json            # writes docs/reports/retrieval.{json,md}
    prism eval retrieval --tune            # chooses the fusion on the dev splits, freezes ray_app/store/fusion.json
    python -m ray_app.evaluation.retrieval --json

Sets (:data:`SETS`): ``description`` (the Wikidata short description -> its article),
``masked_sentence`` (the middle sentence of a summary, the article's title words masked -> the
article), ``sft_question`` (the plain question the SFT data asks of an article, ``ray_app/llm/data.py``
-> the article) and ``caption_image`` (a stamp's caption -> the stamp's image document). A document is
on the dev or the test side in every set alike (:func:`split_of`); the fusion is chosen on dev only
(``--tune``), and the report's ``sets`` are the test side.

Ranks are over distinct documents (a document's best chunk counts), so a query scores 1 at rank r
when its document is the r-th distinct document returned.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ray_app.entrypoints import int_at_least, job_parser, run_job
from ray_app.errors import InputError
from ray_app.reports import load_average, write_report
from ray_app.store.fusion import FusionParams, save_fusion_params

MODES = ("vector", "text", "hybrid")
SETS = ("description", "masked_sentence", "sft_question", "caption_image")
TEXT_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SHARPNESS = (1.0, 2.0, 4.0)
# The fusions --tune chooses from: a convex combination of z-scored or min-max scores with fixed weights or
# weights that lean, per query, on the list whose best hit stands out (sharpness), or weighted RRF.
CANDIDATES = (
    tuple(FusionParams(method=m, text_weight=w) for m in ("zscore", "minmax") for w in TEXT_WEIGHTS)
    + tuple(FusionParams(method=m, text_weight=w, sharpness=s) for m in ("zscore", "minmax")
            for w in TEXT_WEIGHTS[2:-1] for s in SHARPNESS)
    + tuple(FusionParams(method="rrf", text_weight=w) for w in (0.25, 0.5, 0.75, 1.0)))
# A set where hybrid is within this much of its better single mode (R@10 and MRR) counts as "not worse".
TOLERANCE = 0.005
DEPTH = 10
LATENCY_QUERIES = 200
PROG = "python -m ray_app.evaluation.retrieval"
# The description, whether metadata holds a JSON object or (older writes) that object encoded as a JSON string.
_META = "(CASE jsonb_typeof(d.metadata) WHEN 'string' THEN (d.metadata #>> '{}')::jsonb ELSE d.metadata END)"
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"\w+")


@dataclass
class RetrievalEvalConfig:
    """What `prism eval retrieval` evaluates and where it writes.

    Attributes:
        queries: per set, evaluate a deterministic spread of this many queries (None: all).
        depth: candidates per list fused by hybrid search (None: the frozen fusion's).
        tune: choose the fusion on the dev splits and freeze it in ``fusion_out``.
        fusion_out: where ``tune`` freezes the fusion (None: ``ray_app/store/fusion.json``, what search loads).
        out: folder for ``retrieval.{json,md}`` (``retrieval-onnx-int8.*`` with the INT8 embedder).
        write: write the report files.
        corpus_command: how the corpus was built, quoted in the report.
    """

    queries: int | None = None
    depth: int | None = None
    tune: bool = False
    fusion_out: Path | None = None
    out: Path = Path("docs/reports")
    write: bool = True
    corpus_command: str | None = None


@dataclass
class Query:
    text: str
    doc_id: str


def split_of(doc_id: str) -> str:
    """``dev`` or ``test``, fixed by the target document's id (the same in every set and every run)."""
    return "dev" if int(hashlib.sha256(f"prism-retrieval:{doc_id}".encode()).hexdigest()[:8], 16) % 2 == 0 else "test"


def spread(queries: list[Query], limit: int | None) -> list[Query]:
    """A deterministic spread of ``limit`` queries over the whole list (all when ``limit`` is None)."""
    if limit is None or limit >= len(queries):
        return queries
    step = len(queries) / limit
    return [queries[int(i * step)] for i in range(limit)]


def load_queries(store, limit: int | None = None) -> list[Query]:
    """``description``: one query per wiki document with a non-empty description, sorted by document id."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            f"SELECT d.id, {_META} ->> 'description' FROM documents d WHERE d.source = 'wiki'"
            f" AND coalesce({_META} ->> 'description', '') <> '' ORDER BY d.id"
        ).fetchall()
    return spread([Query(text, doc_id) for doc_id, text in rows], limit)


def wiki_articles(store) -> list[tuple[str, str, str, str]]:
    """``(doc_id, title, category, summary)`` per wiki document, the summary from its chunks (title prefix off)."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            "SELECT d.id, d.title, coalesce(d.category, ''), string_agg(c.text, ' ' ORDER BY c.ord)"
            " FROM documents d JOIN chunks c ON c.doc_id = d.id AND c.ord = 0 WHERE d.source = 'wiki'"
            " GROUP BY d.id ORDER BY d.id"
        ).fetchall()
    return [(doc_id, title, category, text.removeprefix(f"{title}: ")) for doc_id, title, category, text in rows]


def mask_title(sentence: str, title: str) -> str:
    """``sentence`` with every word of ``title`` (and its possessive) replaced by ``___``."""
    words = {w.lower() for w in _WORD.findall(title) if len(w) > 1}
    return _WORD.sub(lambda m: "___" if m.group(0).lower() in words else m.group(0), sentence)


def masked_sentence_queries(store, limit: int | None = None) -> list[Query]:
    """``masked_sentence``: the middle sentence of each summary of three or more sentences, title masked."""
    queries = []
    for doc_id, title, _, text in wiki_articles(store):
        sentences = [s.strip() for s in _SENTENCE.split(text) if s.strip()]
        if len(sentences) < 3:
            continue
        masked = mask_title(sentences[len(sentences) // 2], title)
        if len(_WORD.findall(masked.replace("___", ""))) >= 5:
            queries.append(Query(masked, doc_id))
    return spread(queries, limit)


def sft_question_queries(store, limit: int | None = None) -> list[Query]:
    """``sft_question``: the plain question the SFT data asks of each article (who/where/what is)."""
    from ray_app.llm.data import Article, natural_kind, question_for

    queries = []
    for doc_id, title, category, text in wiki_articles(store):
        article = Article(title, text, category, "", [text])
        queries.append(Query(question_for(natural_kind(article), article), doc_id))
    return spread(queries, limit)


def caption_image_queries(store, limit: int | None = None) -> list[Query]:
    """``caption_image``: each captioned image's caption -> the document that holds the image."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            "SELECT DISTINCT ON (i.doc_id) i.doc_id, i.caption FROM images i JOIN documents d ON d.id = i.doc_id"
            " WHERE coalesce(btrim(i.caption), '') <> '' AND EXISTS (SELECT 1 FROM chunks c WHERE c.doc_id = d.id)"
            " ORDER BY i.doc_id, i.id"
        ).fetchall()
    return spread([Query(caption, doc_id) for doc_id, caption in rows], limit)


QUERY_SETS = {"description": load_queries, "masked_sentence": masked_sentence_queries,
              "sft_question": sft_question_queries, "caption_image": caption_image_queries}


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


def candidate_key(params: FusionParams) -> str:
    """``zscore@0.5``, ``zscore@0.5~2`` (sharpness 2), ``rrf@0.25``."""
    return f"{params.method}@{params.text_weight:g}" + (f"~{params.sharpness:g}" if params.sharpness else "")


def search_ranks(store, queries: list[Query], vectors: np.ndarray, depth: int, fusion: FusionParams,
                 advance=None) -> dict[str, list]:
    """The target's distinct-document rank per query and mode (None: not in the top 10).

    Hybrid is what ``Store.search_hybrid`` computes with ``fusion`` (``depth`` vector and ``depth``
    BM25 candidates); both lists are fetched once and reused for the single-mode rankings and for
    every candidate fusion (keys ``zscore@0.5``, ``rrf@0.25``, ...).
    """
    ranks: dict[str, list] = {m: [] for m in (*MODES, *map(candidate_key, CANDIDATES))}
    fetch = 4 * DEPTH  # chunks kept so that 10 distinct documents remain
    for query, vector in zip(queries, vectors, strict=True):
        vector_hits = store.search_vector(vector, max(depth, fetch))
        text_hits = store.search_text(query.text, max(depth, fetch))
        results = {"vector": vector_hits[:fetch], "text": text_hits[:fetch],
                   "hybrid": fusion.fuse(vector_hits[:depth], text_hits[:depth], fetch)}
        for params in CANDIDATES:
            results[candidate_key(params)] = params.fuse(vector_hits[:depth], text_hits[:depth], fetch)
        for mode, hits in results.items():
            ranks[mode].append(rank_of(query.doc_id, distinct_docs(hits)))
        if advance is not None:
            advance()
    return ranks


def split_metrics(ranks: dict[str, list], splits: list[str], keys) -> dict[str, dict]:
    """``{"dev"|"test": {key: metrics}}`` for the given rank keys."""
    return {side: {key: metrics([r for r, s in zip(ranks[key], splits, strict=True) if s == side]) | {
        "n": splits.count(side)} for key in keys} for side in ("dev", "test")}


def choose_fusion(dev: dict[str, dict[str, dict]]) -> FusionParams:
    """The candidate that, on the sets' dev splits, is within ``TOLERANCE`` of the better single mode
    (R@10 and MRR) on the most sets, then has the best mean (MRR + R@10); ties: the earlier candidate."""
    def objective(params: FusionParams) -> tuple[int, float]:
        key = candidate_key(params)
        not_worse = sum(all(dev[s][key][m] >= max(dev[s]["vector"][m], dev[s]["text"][m]) - TOLERANCE
                            for m in ("r_at_10", "mrr")) for s in dev)
        return not_worse, float(np.mean([dev[s][key]["mrr"] + dev[s][key]["r_at_10"] for s in dev]))

    return max(CANDIDATES, key=objective)


def measure_latency(store, queries: list[Query], vectors: np.ndarray, k: int = 10) -> dict:
    """p50/p95 milliseconds of ``search_text``, ``search_vector`` and ``search_hybrid`` (query vector given)."""
    calls = {"text": lambda q, v: store.search_text(q.text, k),
             "vector": lambda q, v: store.search_vector(v, k),
             "hybrid": lambda q, v: store.search_hybrid(q.text, v, k)}
    out = {}
    for mode, call in calls.items():
        times = []
        for query, vector in zip(queries, vectors, strict=True):
            started = time.perf_counter()
            call(query, vector)
            times.append((time.perf_counter() - started) * 1000)
        out[mode] = {"p50": round(float(np.percentile(times, 50)), 2), "p95": round(float(np.percentile(times, 95)), 2),
                     "n": len(times)}
    return out


def corpus_counts(store) -> dict:
    with store.pool.connection() as conn:
        docs, chunks, all_chunks = conn.execute(
            "SELECT count(*), (SELECT count(*) FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE d.source = 'wiki'),"
            " (SELECT count(*) FROM chunks) FROM documents WHERE source = 'wiki'"
        ).fetchone()
    return {"source": "wiki", "documents": docs, "chunks": chunks, "full": docs >= 10_033, "store_chunks": all_chunks}


def evaluate_retrieval(store=None, limit: int | None = None, depth: int | None = None, tune: bool = False,
                       fusion_out: Path | None = None, quiet: bool = False) -> dict:
    """Run every query set against the store.

    Args:
        store: the store (default: the process-wide one).
        limit: per set, evaluate a deterministic spread of this many queries (default: all).
        depth: candidates per list fused by hybrid search (default: the frozen fusion's).
        tune: choose the fusion on the dev splits, freeze it (``fusion_out``) and report with it.
        fusion_out: where ``tune`` writes (default ``ray_app/store/fusion.json``).
        quiet: no progress bar.

    Raises:
        InputError: no wiki documents with descriptions in the store.
    """
    from rich.console import Console
    from rich.progress import Progress

    from ray_app.models.text import get_text_embedder
    from ray_app.store import get_store

    store = store or get_store()
    load_start = load_average()
    sets = {name: QUERY_SETS[name](store, limit) for name in SETS}
    if not sets["description"]:
        raise InputError("no wiki documents in the store: run `prism corpus build wiki` and `prism ingest` first")
    sets = {name: queries for name, queries in sets.items() if queries}
    started = time.perf_counter()
    embedder = get_text_embedder()
    fusion = store.fusion if depth is None else replace(store.fusion, depth=depth)
    index_started = time.perf_counter()
    store.lexical_index()
    index_build_s = time.perf_counter() - index_started
    ranks, splits, vectors = {}, {}, {}
    with Progress(console=Console(stderr=True), transient=True, disable=quiet) as bar:
        task = bar.add_task("retrieval eval", total=sum(map(len, sets.values())))
        for name, queries in sets.items():
            vectors[name] = embedder.embed([q.text for q in queries])
            ranks[name] = search_ranks(store, queries, vectors[name], fusion.depth, fusion, lambda: bar.advance(task))
            splits[name] = [split_of(q.doc_id) for q in queries]
    keys = [*MODES, *map(candidate_key, CANDIDATES)]
    by_split = {name: split_metrics(ranks[name], splits[name], keys) for name in sets}
    chosen = None
    if tune:
        chosen = choose_fusion({name: by_split[name]["dev"] for name in sets})
        chosen = replace(chosen, depth=fusion.depth, chosen_on={
            "command": "prism eval retrieval --tune" + (f" --queries {limit}" if limit else ""), "split": "dev",
            "sets": {name: splits[name].count("dev") for name in sets},
            "objective": f"most sets within {TOLERANCE} of the better single mode (R@10 and MRR), then the "
                         "mean over sets of MRR@10 + R@10, on dev",
            "candidates": [candidate_key(c) for c in CANDIDATES]})
        save_fusion_params(chosen, fusion_out)
        store.fusion = fusion = chosen
        for name in sets:  # report with the fusion just frozen
            ranks[name]["hybrid"] = ranks[name][candidate_key(chosen)]
            by_split[name] = split_metrics(ranks[name], splits[name], keys)
    sample = [q for q in sets.get("masked_sentence", sets["description"]) if split_of(q.doc_id) == "test"]
    sample_vectors = embedder.embed([q.text for q in sample[:LATENCY_QUERIES]])
    latency = measure_latency(store, sample[:LATENCY_QUERIES], sample_vectors)
    description = sets["description"]
    result = {
        "corpus": corpus_counts(store),
        "queries": len(description),
        "distinct_query_texts": len({q.text for q in description}),
        "modes": {mode: metrics(ranks["description"][mode]) for mode in MODES},
        "hybrid_text_weight": fusion.text_weight,
        "text_weight_sweep": weight_sweep(by_split["description"], fusion),
        "hybrid_depth": fusion.depth,
        "fusion": fusion.to_dict(),
        "tuned": tune,
        "sets": {name: {mode: by_split[name]["test"][mode] for mode in MODES} for name in sets},
        "sets_dev": {name: {mode: by_split[name]["dev"][mode] for mode in MODES} for name in sets},
        "fusion_candidates_dev": {name: {key: by_split[name]["dev"][key] for key in keys[len(MODES):]} for name in sets},
        "targets": targets(by_split, sets),
        "latency_ms": latency,
        "lexical_index": {"chunks": store.lexical_index().n, "terms": len(store.lexical_index().vocabulary),
                          "build_s": round(index_build_s, 2)},
        "backend": embedder.backend,
        "seconds": round(time.perf_counter() - started, 2),
        "load_average": {"start": load_start, "end": load_average()},
    }
    result["hybrid_not_worse_than_vector_r10"] = result["modes"]["hybrid"]["r_at_10"] >= result["modes"]["vector"]["r_at_10"]
    return result


def weight_sweep(by_split: dict[str, dict], fusion: FusionParams) -> dict:
    """R@10 and MRR per text weight of the frozen method (and sharpness), on the description set's splits."""
    keys = {str(w): candidate_key(replace(fusion, text_weight=w)) for w in TEXT_WEIGHTS}
    halves = {side: {w: by_split[side][key] for w, key in keys.items() if key in by_split[side]} for side in ("dev", "test")}
    for side in halves:
        halves[side]["vector"] = by_split[side]["vector"]
    best = max(halves["dev"].keys() - {"vector"}, key=lambda w: (halves["dev"][w]["r_at_10"] + halves["dev"][w]["mrr"], -float(w)))
    return {"method": fusion.method, "sharpness": fusion.sharpness, "weights": [float(w) for w in halves["dev"] if w != "vector"],
            "halves": halves, "best_on_dev": float(best)}


def targets(by_split: dict, sets: dict) -> dict:
    """Issue 23's targets on the test splits: hybrid within 0.005 of the better single mode (R@10, MRR)
    on every set, and at least 0.02 better on two."""
    per_set = {}
    for name in sets:
        test = by_split[name]["test"]
        margins = {m: round(test["hybrid"][m] - max(test["vector"][m], test["text"][m]), 4) for m in ("r_at_10", "mrr")}
        per_set[name] = {"hybrid_minus_best_single": margins,
                         "not_worse": all(v >= -TOLERANCE for v in margins.values()),
                         "better_by_0_02": any(v >= 0.02 for v in margins.values())}
    return {"per_set": per_set, "hybrid_never_worse": all(s["not_worse"] for s in per_set.values()),
            "sets_better_by_0_02": sum(s["better_by_0_02"] for s in per_set.values())}


SET_NOTES = {
    "description": "the Wikidata short description of an article -> the article",
    "masked_sentence": "the middle sentence of a summary (3+ sentences), the title's words masked as ___ -> the article",
    "sft_question": "the plain SFT question of an article (`ray_app/llm/data.py`: who was / where is / what is) -> the article",
    "caption_image": "a stamp's caption -> the document of its image (title and text are the caption: a near-exact-match set)",
}


def render_markdown(result: dict) -> str:
    """The Markdown page for ``retrieval.md`` (the command that ran is ``result["command"]``)."""
    command = result["command"]
    corpus = result["corpus"]
    fusion = result.get("fusion", {})
    scope = ("the full wiki corpus" if corpus["full"] else
             f"a deterministic subset of the wiki corpus ({corpus['documents']:,} of 10,033 articles)")
    lines = [
        "# Retrieval evaluation",
        "",
        f"Generated by `{command}` on {scope}: {corpus['documents']:,} documents, {corpus['chunks']:,} chunks "
        f"({corpus.get('store_chunks', corpus['chunks']):,} chunks in the store), embedded (documents and queries) "
        f"with the {result.get('backend', 'onnx')} backend. Load average (1/5/15 min) at start "
        f"{result.get('load_average', {}).get('start')}, at end {result.get('load_average', {}).get('end')}.",
        *([f"Corpus built and loaded with `{result['corpus_command']}`."] if result.get("corpus_command") else []),
        "",
        "Text search is Okapi BM25 (k1 1.2, b 0.75) over the chunks' Postgres lexemes (`ray_app/store/lexical.py`); "
        f"hybrid search merges {fusion.get('depth')} vector and {fusion.get('depth')} BM25 candidates by "
        + (f"a convex combination of {fusion.get('method')}-normalised scores, BM25 weighted {fusion.get('text_weight')} "
           f"and vector {round(1 - fusion.get('text_weight', 0), 3)}"
           + (f", each weight scaled per query by (1 + the gap between its list's first and second normalised "
              f"scores)^{fusion.get('sharpness')} and the two scaled back to sum 1" if fusion.get("sharpness") else "")
           if fusion.get("method") != "rrf" else f"weighted RRF (text weight {fusion.get('text_weight')})")
        + " — parameters frozen in `ray_app/store/fusion.json`, chosen by `prism eval retrieval --tune` on the dev "
          "splits only. Each set is split dev/test by a fixed hash of the target document's id (the same side in "
          "every set); the tables below are the **test** split. Ranks count distinct documents.",
        "",
    ]
    for name, modes in result.get("sets", {}).items():
        n = next(iter(modes.values()))["n"]
        lines += [f"## {name} ({n:,} test queries)", "", SET_NOTES.get(name, ""), "",
                  "| mode | R@1 | R@10 | MRR@10 | nDCG@10 |", "|---|---|---|---|---|"]
        for mode, m in modes.items():
            lines.append(f"| {mode} | {m['r_at_1']:.3f} | {m['r_at_10']:.3f} | {m['mrr']:.3f} | {m['ndcg_at_10']:.3f} |")
        target = result.get("targets", {}).get("per_set", {}).get(name)
        if target:
            margins = target["hybrid_minus_best_single"]
            lines += ["", f"Hybrid minus the better single mode: R@10 {margins['r_at_10']:+.3f}, MRR {margins['mrr']:+.3f}."]
        lines.append("")
    t = result.get("targets")
    if t:
        lines += [f"Targets (issue 23): hybrid never more than 0.005 behind the better single mode on R@10 and MRR: "
                  f"**{'met' if t['hybrid_never_worse'] else 'NOT met'}**; sets where hybrid is ≥ 0.02 ahead on R@10 "
                  f"or MRR: **{t['sets_better_by_0_02']}** (target: 2).", ""]
    latency = result.get("latency_ms")
    if latency:
        lines += [f"## Latency ({next(iter(latency.values()))['n']} test queries of the masked-sentence set, query "
                  "vector given, one client, this machine)", "",
                  "| mode | p50 ms | p95 ms |", "|---|---|---|"]
        lines += [f"| {mode} | {m['p50']:.1f} | {m['p95']:.1f} |" for mode, m in latency.items()]
        index = result.get("lexical_index", {})
        lines += ["", f"The BM25 index held {index.get('chunks', 0):,} chunks and {index.get('terms', 0):,} terms and "
                  f"was built in {index.get('build_s')} s (it is rebuilt when a write changes the chunks).", ""]
    lines += [f"## All {result['queries']:,} description queries (dev and test)", "",
              f"{result['distinct_query_texts']:,} distinct texts; repeated descriptions such as \"Family of birds\" "
              "cannot single out one article.", "",
              "| mode | R@1 | R@10 | MRR@10 | nDCG@10 |", "|---|---|---|---|---|"]
    for mode, m in result["modes"].items():
        lines.append(f"| {mode} | {m['r_at_1']:.3f} | {m['r_at_10']:.3f} | {m['mrr']:.3f} | {m['ndcg_at_10']:.3f} |")
    sweep = result.get("text_weight_sweep")
    if sweep:
        lines += ["", f"BM25 weight in the {sweep.get('method', 'rrf')} fusion (sharpness {sweep.get('sharpness', 0)}), "
                  "R@10 / MRR@10 on the description "
                  f"set's dev and test splits. Best on dev for this set alone: {sweep['best_on_dev']}.",
                  "", "| text weight | dev R@10 | dev MRR | test R@10 | test MRR |", "|---|---|---|---|---|"]
        for key in [*map(str, sweep["weights"]), "vector"]:
            dev, test = sweep["halves"]["dev"][key], sweep["halves"]["test"][key]
            label = "vector only" if key == "vector" else key
            lines.append(f"| {label} | {dev['r_at_10']:.3f} | {dev['mrr']:.3f} | {test['r_at_10']:.3f} | {test['mrr']:.3f} |")
    lines += ["", f"The numbers are in `{report_name(result)}.json` next to this file (`sets_dev` and "
              "`fusion_candidates_dev` hold the dev split the fusion was chosen on).", ""]
    return "\n".join(lines)


def report_name(result: dict) -> str:
    """``retrieval``; ``retrieval-onnx-int8`` for the INT8 embedder, whose vectors differ."""
    backend = result.get("backend", "onnx")
    return "retrieval" if backend in ("onnx", "torch") else f"retrieval-{backend}"


def describe(result: dict) -> str:
    """One line per set and search mode (what the job prints without ``--json``)."""
    return "\n".join(f"{name:>15} {mode:>7}: R@1 {m['r_at_1']:.3f}  R@10 {m['r_at_10']:.3f}  MRR {m['mrr']:.3f}  "
                     f"nDCG@10 {m['ndcg_at_10']:.3f}  (n {m['n']})"
                     for name, modes in result["sets"].items() for mode, m in modes.items())


def eval_retrieval(config: RetrievalEvalConfig) -> dict:
    """Evaluate and (with ``config.write``) write the report; returns the result.

    Raises:
        InputError: no wiki documents with descriptions in the store.
    """
    result = evaluate_retrieval(limit=config.queries, depth=config.depth, tune=config.tune,
                                fusion_out=config.fusion_out)
    if config.corpus_command:
        result["corpus_command"] = config.corpus_command
    command = "prism eval retrieval" + (" --tune" if config.tune else "") + (
        f" --queries {config.queries}" if config.queries else "") + (f" --depth {config.depth}" if config.depth else "")
    if report_name(result) != "retrieval":
        command = f"PRISM_EMBED_BACKEND={result['backend']} {command}"
    if config.write:
        write_report(config.out, report_name(result), result, render_markdown, command=command)
    return result


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The job's arguments; every default is :class:`RetrievalEvalConfig`'s."""
    d = RetrievalEvalConfig
    p = job_parser(prog, __doc__)
    p.add_argument("--queries", type=int_at_least(1), default=d.queries,
                   help="Per set, evaluate a deterministic spread of N queries (default all).")
    p.add_argument("--depth", type=int_at_least(1), default=d.depth, help="Candidates per list fused by hybrid search.")
    p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=d.tune,
                   help="Choose the fusion on the dev splits and freeze it in ray_app/store/fusion.json.")
    p.add_argument("--fusion-out", type=Path, default=d.fusion_out,
                   help="Where --tune freezes the fusion (default ray_app/store/fusion.json, what search loads).")
    p.add_argument("--out", type=Path, default=d.out, help="Where retrieval.{json,md} are written.")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=d.write, help="Write the report files.")
    p.add_argument("--corpus-command", default=d.corpus_command, help="How the corpus was built (for the report).")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``prism eval retrieval`` / ``python -m ray_app.evaluation.retrieval``: evaluate, write the report, print the result."""
    return run_job(build_parser(prog or PROG), argv, lambda args: eval_retrieval(RetrievalEvalConfig(**args)), describe)


if __name__ == "__main__":
    main()
