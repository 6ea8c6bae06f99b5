"""Fairness of exposure: each group's share of position-discounted exposure in the top k against its share of
the relevant pool, and the exposure-aware re-ranking that is Prism's mitigation.

    exposure_by_group(rankings, pools, group_of, k=10)   # {"group": {"exposure_share", "pool_share", "ratio"}}
    rerank_for_exposure(hits, group_of, k=10)            # the same hits, people slots re-assigned

Exposure at rank r is ``1 / log2(1 + r)`` (the DCG discount; Singh & Joachims, "Fairness of Exposure in
Rankings", 2018). For one query, only the top-k documents that are in its relevant pool count; over a set of
queries, exposures and pool counts are summed before the shares are taken. A ratio of 1 means a group is
shown as often as its presence in the pool predicts; below 1, under-exposed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ray_app.bias.annotate import UNKNOWN


def position_weight(rank: int) -> float:
    """The exposure of rank ``rank`` (1-based)."""
    return 1.0 / math.log2(1 + rank)


def exposure_by_group(rankings: Sequence[Sequence[str]], pools: Sequence[set[str]], group_of: Callable[[str], str],
                      k: int = 10) -> dict[str, dict]:
    """Per group: summed exposure share in the top ``k`` vs its share of the relevant pools, and their ratio.

    Args:
        rankings: per query, distinct document ids in rank order.
        pools: per query, the ids of the relevant documents (the biographies the query is about).
        group_of: a document's group (e.g. its annotated gender).
        k: the cut-off.

    Returns:
        ``{group: {"exposure_share", "pool_share", "ratio", "exposure", "pool"}}`` for every group in the pools
        (``ratio`` None for a group with no pool share).
    """
    exposure: dict[str, float] = {}
    pool: dict[str, int] = {}
    for ranking, relevant in zip(rankings, pools, strict=True):
        for doc in relevant:
            pool[group_of(doc)] = pool.get(group_of(doc), 0) + 1
        for rank, doc in enumerate(ranking[:k], 1):
            if doc in relevant:
                exposure[group_of(doc)] = exposure.get(group_of(doc), 0.0) + position_weight(rank)
    total_exposure, total_pool = sum(exposure.values()), sum(pool.values())
    out = {}
    for group in sorted(set(pool) | set(exposure)):
        e_share = exposure.get(group, 0.0) / total_exposure if total_exposure else 0.0
        p_share = pool.get(group, 0) / total_pool if total_pool else 0.0
        out[group] = {"exposure_share": round(e_share, 4), "pool_share": round(p_share, 4),
                      "ratio": round(e_share / p_share, 3) if p_share else None,
                      "exposure": round(exposure.get(group, 0.0), 4), "pool": pool.get(group, 0)}
    return out


def exposure_gap(groups: dict[str, dict], skip: tuple[str, ...] = (UNKNOWN,), min_pool: int = 1) -> float | None:
    """The largest ``|ratio - 1|`` over the groups with at least ``min_pool`` pool entries (the unknown group left
    out): 0 is perfectly fair."""
    ratios = [g["ratio"] for name, g in groups.items()
              if name not in skip and g["ratio"] is not None and g["pool"] >= min_pool]
    return round(max(abs(r - 1) for r in ratios), 3) if ratios else None


def distinct_in_order(hits) -> list:
    """The first hit of each document, in rank order."""
    seen, out = set(), []
    for hit in hits:
        if hit.doc_id not in seen:
            seen.add(hit.doc_id)
            out.append(hit)
    return out


def rerank_for_exposure(hits: Sequence, group_of: Callable[[str], str | None], k: int = 10,
                        weight: float = 0.5) -> list:
    """Exposure-aware re-ranking of search hits (the mitigation; off unless asked for).

    The top ``k`` documents keep their places except the slots that hold a person with a known group; those
    slots are re-filled, best slot first, from every such person among ``hits`` (the candidate depth), each time
    with the person maximising ``(1 - weight) * relevance + weight * deficit``: relevance is the hit's score
    min-max normalised over the candidates, deficit is the group's share among the candidates minus its share of
    the exposure given so far. Documents that are not people (or whose group is unknown) never move, so a
    question about anything else is answered from the same passages.

    Args:
        hits: ranked search hits (chunks; several per document allowed), with ``doc_id`` and ``score``.
        group_of: a document's group, None (or ``unknown``) for a document that is not a person.
        k: the slots re-ranked.
        weight: 0 leaves the ranking as it is; 1 balances exposure whatever the relevance.

    Returns:
        The hits, each document's chunks kept together, in the new document order.
    """
    docs = distinct_in_order(hits)
    known = {d.doc_id: g for d in docs if (g := group_of(d.doc_id)) not in (None, UNKNOWN)}
    slots = [i for i, d in enumerate(docs[:k]) if d.doc_id in known]
    if not slots or weight <= 0:
        return list(hits)
    candidates = [d for d in docs if d.doc_id in known]
    scores = [d.score for d in candidates]
    low, span = min(scores), (max(scores) - min(scores)) or 1.0
    target = {g: sum(known[d.doc_id] == g for d in candidates) / len(candidates) for g in set(known.values())}
    given: dict[str, float] = {}
    order = list(docs)
    for slot in slots:
        total = sum(given.values())
        shares = {g: (given.get(g, 0.0) / total if total else 0.0) for g in target}
        # max keeps the first of equal values: ties go to the better-ranked candidate
        chosen = max(candidates, key=lambda d: (1 - weight) * (d.score - low) / span
                     + weight * (target[known[d.doc_id]] - shares[known[d.doc_id]]))
        candidates.remove(chosen)
        order[slot] = chosen
        given[known[chosen.doc_id]] = given.get(known[chosen.doc_id], 0.0) + position_weight(slot + 1)
    placed = {d.doc_id for d in order[:k]}
    order = order[:k] + [d for d in docs if d.doc_id not in placed]
    by_doc: dict[str, list] = {}
    for hit in hits:
        by_doc.setdefault(hit.doc_id, []).append(hit)
    return [hit for doc in order for hit in by_doc[doc.doc_id]]


_META = "(CASE jsonb_typeof(d.metadata) WHEN 'string' THEN (d.metadata #>> '{}')::jsonb ELSE d.metadata END)"
_GROUPS_CACHE: dict[str, object] = {}


def document_attributes(store, doc_ids: Sequence[str]) -> dict[str, object]:
    """:class:`~ray_app.bias.annotate.Attributes` of the people among ``doc_ids`` (category People), read from the
    store (title, description, first chunk) and annotated once per process; other documents are left out."""
    from ray_app.bias.annotate import PEOPLE_CATEGORY, annotate

    missing = [d for d in dict.fromkeys(doc_ids) if d not in _GROUPS_CACHE]
    if missing:
        with store.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT d.id, d.title, coalesce({_META} ->> 'description', ''), coalesce(c.text, '')"
                " FROM documents d LEFT JOIN chunks c ON c.doc_id = d.id AND c.ord = 0"
                " WHERE d.id = ANY(%s) AND d.category = %s", (missing, PEOPLE_CATEGORY)).fetchall()
        found = {doc_id: annotate(title, description, text.removeprefix(f"{title}: "))
                 for doc_id, title, description, text in rows}
        for doc_id in missing:
            _GROUPS_CACHE[doc_id] = found.get(doc_id)
    return {d: _GROUPS_CACHE[d] for d in doc_ids if _GROUPS_CACHE.get(d) is not None}


ATTRIBUTE_CHOICES = ("gender", "region", "era")


def rerank_hits(store, hits: Sequence, attribute: str, k: int, weight: float = 0.5) -> list:
    """:func:`rerank_for_exposure` over ``attribute`` (gender, region or era) of the people among ``hits``.

    Raises:
        ValueError: an unknown attribute.
    """
    if attribute not in ATTRIBUTE_CHOICES:
        raise ValueError(f"fair exposure attribute must be one of {', '.join(ATTRIBUTE_CHOICES)}, got {attribute!r}")
    people = document_attributes(store, [h.doc_id for h in hits if h.doc_id])
    return rerank_for_exposure(hits, lambda doc: getattr(people[doc], attribute) if doc in people else None, k, weight)
