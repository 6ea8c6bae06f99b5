"""The bias audit's measurements on a real store: exposure of the biographies' groups for neutral queries, and
the exposure-aware re-ranking's effect on it and on retrieval (R@10).

Used by ``prism rai report`` (:mod:`ray_app.rai.report`); each function returns JSON-ready dicts.
"""

from __future__ import annotations

import re
from pathlib import Path

from ray_app.bias.annotate import ATTRIBUTES
from ray_app.bias.exposure import exposure_by_group, exposure_gap, rerank_hits
from ray_app.jsonl import read_jsonl

QUERIES_PATH = Path("datasets/rai/exposure_queries.jsonl")
RECALL_SETS = ("description", "masked_sentence", "sft_question")
MIN_POOL = 20  # a group with fewer pool entries (summed over the queries) is reported but left out of the gap


def relevant_pool(pattern: str, biographies: list[dict]) -> set[str]:
    """The biographies whose description names the query's occupation (``pattern``: word alternatives)."""
    rx = re.compile(r"\b(" + pattern + r")s?\b", re.IGNORECASE)
    return {b["doc_id"] for b in biographies if rx.search(b["description"])}


def ranked_docs(hits, k: int) -> list[str]:
    seen: list[str] = []
    for hit in hits:
        if hit.doc_id not in seen:
            seen.append(hit.doc_id)
    return seen[:k]


def search_depth_hits(store, embedder, text: str, vector=None, k: int = 10) -> list:
    """The hybrid hits behind a top-``k`` search (the same candidate lists), ``4 k`` chunks deep: room for
    ``k`` distinct documents and for the re-ranking's candidates."""
    vector = embedder.embed([text])[0] if vector is None else vector
    return store.search_hybrid(text, vector, 4 * k, depth=max(4 * k, store.fusion.depth))


def measure_exposure(store, embedder, biographies: list[dict], queries: list[dict], k: int = 10,
                     rerank_weight: float | None = None) -> dict:
    """Fairness of exposure per attribute for the neutral queries (``{"query", "pool"}`` rows).

    With ``rerank_weight``, each attribute is measured on the ranking re-ranked for that attribute
    (:func:`ray_app.bias.exposure.rerank_hits`).
    """
    group = {b["doc_id"]: b["attributes"] for b in biographies}
    pools = [relevant_pool(q["pool"], biographies) for q in queries]
    hits = [search_depth_hits(store, embedder, q["query"], k=k) for q in queries]
    out: dict = {"k": k, "queries": len(queries), "per_query": []}
    for name in ATTRIBUTES:
        if rerank_weight is None:
            rankings = [ranked_docs(h, k) for h in hits]
        else:
            rankings = [ranked_docs(rerank_hits(store, h, name, k, rerank_weight), k) for h in hits]
        groups = exposure_by_group(rankings, pools, lambda d, n=name: getattr(group[d], n), k)
        out[name] = {"groups": groups, "max_ratio_gap": exposure_gap(groups, min_pool=MIN_POOL)}
        if name == ATTRIBUTES[0]:
            out["per_query"] = [{"query": q["query"], "pool": len(p), "relevant_in_top_k": sum(d in p for d in r)}
                                for q, p, r in zip(queries, pools, rankings, strict=True)]
    found = [row["relevant_in_top_k"] for row in out["per_query"]]
    out["relevant_in_top_k_mean"] = round(sum(found) / max(len(found), 1), 2)
    return out


def load_exposure_queries(path: Path | None = None) -> list[dict]:
    return read_jsonl(path or QUERIES_PATH)


def measure_recall_cost(store, embedder, n: int, weights: list[float], k: int = 10) -> dict:
    """R@10 with and without the re-ranking (each weight, each attribute) on a spread of ``n`` queries of each
    retrieval set (:mod:`ray_app.evaluation.retrieval`: description, masked sentence, SFT question); one search per
    query, re-ranked every way."""
    from ray_app.evaluation.retrieval import QUERY_SETS, spread

    out = {}
    for name in RECALL_SETS:
        queries = spread(QUERY_SETS[name](store, None), n)
        if not queries:
            continue
        vectors = embedder.embed([q.text for q in queries])
        baseline, found = 0, {str(w): {a: 0 for a in ATTRIBUTES} for w in weights}
        changed = {str(w): 0 for w in weights}
        for query, vector in zip(queries, vectors, strict=True):
            hits = search_depth_hits(store, embedder, query.text, vector, k)
            base = ranked_docs(hits, k)
            baseline += query.doc_id in base
            for weight in weights:
                for attribute in ATTRIBUTES:
                    reranked = ranked_docs(rerank_hits(store, hits, attribute, k, weight), k)
                    found[str(weight)][attribute] += query.doc_id in reranked
                    changed[str(weight)] += reranked != base
        total = len(queries)
        out[name] = {"n": total, "baseline_r_at_10": round(baseline / total, 4),
                     "by_weight": {w: {"r_at_10": {a: round(v / total, 4) for a, v in found[w].items()},
                                       "rankings_changed_share": round(changed[w] / (total * len(ATTRIBUTES)), 4)}
                                   for w in found}}
    return out


def measure_mitigation(store, embedder, biographies: list[dict], queries: list[dict], weights: list[float],
                       recall_queries: int, k: int = 10) -> dict:
    """Exposure gaps and R@10 before and after the re-ranking, per weight (the mitigation's trade-off)."""
    by_weight = {}
    for weight in weights:
        after = measure_exposure(store, embedder, biographies, queries, k, rerank_weight=weight)
        by_weight[str(weight)] = {a: {"max_ratio_gap": after[a]["max_ratio_gap"],
                                      "ratios": {g: v["ratio"] for g, v in after[a]["groups"].items()}}
                                  for a in ATTRIBUTES}
    return {"method": "exposure-aware re-ranking of the people slots in the top k (ray_app/bias/exposure.py), "
                      "one attribute at a time", "weights": weights, "exposure_by_weight": by_weight,
            "recall": measure_recall_cost(store, embedder, recall_queries, weights, k) if recall_queries else {}}
