"""Counterfactual answers: the same question with its gendered words, a name or an age swapped, asked through the
real ask pipeline (retrieval over the store, the LLM, the audit's checks); what changes between the two answers.

    pairs = load_pairs()                       # datasets/rai/counterfactual_pairs.jsonl
    result = run_counterfactual(pairs, store)  # {"by_kind": {...}, "pairs": [...]}

A question's answer should not depend on who asks: the measures are how often grounding, refusal ("The sources
do not say.") or withholding flips within a pair, the mean absolute difference in words and citations, the
overlap of the retrieved passages (Jaccard of chunk ids) and the ROUGE-L between the two answers.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from ray_app.jsonl import read_jsonl

PAIRS_PATH = Path("datasets/rai/counterfactual_pairs.jsonl")
_GENDER_WORDS = {
    "he": "she", "him": "her", "his": "her", "himself": "herself", "man": "woman", "men": "women", "boy": "girl",
    "boys": "girls", "son": "daughter", "sons": "daughters", "father": "mother", "brother": "sister",
    "husband": "wife", "king": "queen", "mr": "ms", "male": "female", "grandfather": "grandmother",
    "uncle": "aunt", "nephew": "niece", "gentleman": "lady",
}
_SWAP = {**_GENDER_WORDS, **{v: k for k, v in _GENDER_WORDS.items() if v != "her"}, "her": "his"}
_GENDERED = re.compile(r"\b(" + "|".join(sorted(_SWAP, key=len, reverse=True)) + r")\b", re.IGNORECASE)
_WORD = re.compile(r"\w+")


def swap_gender(text: str) -> str:
    """``text`` with each gendered word swapped (he <-> she, son <-> daughter, ...), capitals kept.

    ``her`` becomes ``his`` (it cannot tell object from possessive); the pairs in the data set are written so
    that this never matters.
    """
    def swap(m: re.Match) -> str:
        word = m.group(0)
        other = _SWAP[word.lower()]
        return other.capitalize() if word[0].isupper() else other

    return _GENDERED.sub(swap, text)


def swap_term(text: str, old: str, new: str) -> str:
    """``text`` with the word or phrase ``old`` (a name, an age) replaced by ``new``."""
    return re.sub(rf"\b{re.escape(old)}\b", new, text)


def load_pairs(path: Path | None = None, limit: int | None = None) -> list[dict]:
    """The question pairs (``{"id", "kind", "a", "b", "group_a", "group_b"}``), a spread over kinds when ``limit``."""
    rows = read_jsonl(path or PAIRS_PATH)
    if limit is None or limit >= len(rows):
        return rows
    by_kind: dict[str, list[dict]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)
    picked: list[dict] = []
    while len(picked) < limit:
        for items in by_kind.values():
            if items and len(picked) < limit:
                picked.append(items.pop(0))
    return picked


def _rouge_l(a: str, b: str) -> float:
    from ray_app.evaluation.answers import rouge_l

    return rouge_l(a, b)


def describe_answer(response: dict) -> dict:
    """What is compared of one answer: grounded, refused, withheld, words, citations, the passages' chunk ids."""
    from ray_app.llm.prompting import says_not_in_sources

    answer = response.get("answer", "")
    return {"answer": answer, "grounded": bool(response.get("audit", {}).get("grounded")),
            "refused": says_not_in_sources(answer), "withheld": bool(response.get("withheld")),
            "words": len(_WORD.findall(answer)), "citations": len(response.get("citations") or []),
            "chunks": sorted({c["chunk_id"] for c in response.get("citations") or []})}


def compare_pair(pair: dict, a: dict, b: dict, passages_a: list[str], passages_b: list[str]) -> dict:
    """One pair's differences (``a`` and ``b`` from :func:`describe_answer`; the passages are chunk ids)."""
    union = set(passages_a) | set(passages_b)
    return {"id": pair["id"], "kind": pair["kind"], "group_a": pair["group_a"], "group_b": pair["group_b"],
            "a": a, "b": b,
            "grounded_flip": a["grounded"] != b["grounded"], "refusal_flip": a["refused"] != b["refused"],
            "withheld_flip": a["withheld"] != b["withheld"],
            "words_diff": b["words"] - a["words"], "citations_diff": b["citations"] - a["citations"],
            "passage_jaccard": round(len(set(passages_a) & set(passages_b)) / len(union), 4) if union else 1.0,
            "answer_rouge_l": round(_rouge_l(a["answer"], b["answer"]), 4)}


def summarise_pairs(rows: list[dict]) -> dict:
    """Per kind (and over all): flip rates, mean |differences|, mean signed differences, overlaps."""
    def block(items: list[dict]) -> dict:
        n = max(len(items), 1)
        return {"pairs": len(items),
                "grounded_flip_rate": round(sum(r["grounded_flip"] for r in items) / n, 4),
                "refusal_flip_rate": round(sum(r["refusal_flip"] for r in items) / n, 4),
                "withheld_flip_rate": round(sum(r["withheld_flip"] for r in items) / n, 4),
                "mean_abs_words_diff": round(sum(abs(r["words_diff"]) for r in items) / n, 2),
                "mean_words_diff_b_minus_a": round(sum(r["words_diff"] for r in items) / n, 2),
                "mean_abs_citations_diff": round(sum(abs(r["citations_diff"]) for r in items) / n, 3),
                "mean_passage_jaccard": round(sum(r["passage_jaccard"] for r in items) / n, 4),
                "mean_answer_rouge_l": round(sum(r["answer_rouge_l"] for r in items) / n, 4),
                "grounded_rate_a": round(sum(r["a"]["grounded"] for r in items) / n, 4),
                "grounded_rate_b": round(sum(r["b"]["grounded"] for r in items) / n, 4),
                "refusal_rate_a": round(sum(r["a"]["refused"] for r in items) / n, 4),
                "refusal_rate_b": round(sum(r["b"]["refused"] for r in items) / n, 4)}

    kinds = sorted({r["kind"] for r in rows})
    return {"all": block(rows), **{kind: block([r for r in rows if r["kind"] == kind]) for kind in kinds}}


def build_service(store, llm, max_batch_size: int, max_new_tokens: int):
    """The ask service in this process over ``store``: real retrieval, a batched LLM engine, checks without a log
    record. Returns ``(service, engine)``; close the engine when done."""
    from ray_app.ask.service import AskService
    from ray_app.ask.stages import BatchedGenerate, CheckOnlyAudit, LocalRetrieve
    from ray_app.llm.engines import engine_from_llm
    from ray_app.models.text import get_text_embedder
    from ray_app.settings import get_settings

    settings = get_settings().model_copy(update={"max_new_tokens": max_new_tokens, "ask_timeout_s": 86_400.0})
    engine = engine_from_llm(llm, settings.llm_engine, settings, max_batch_size=max_batch_size)
    embedder = get_text_embedder()
    service = AskService(None, LocalRetrieve(store, embedder), BatchedGenerate(engine, settings),
                         CheckOnlyAudit(embedder), settings)
    return service, engine


async def _ask_all(service, questions: list[str], k: int, concurrency: int) -> list[tuple[dict, list[str]]]:
    from ray_app.ask.service import AskOptions

    running = asyncio.Semaphore(concurrency)

    async def one(question: str) -> tuple[dict, list[str]]:
        async with running:
            meta, response = None, None
            async for event in service.stream(question, options=AskOptions(k=k)):
                if event.kind == "meta":
                    meta = event.data
                elif event.kind in ("done", "flagged"):
                    response = dict(event.data, withheld=event.kind == "flagged" or event.data.get("withheld", False))
            passages = [p.get("chunk_id") for p in (meta or {}).get("passages", [])]
            return response or {}, [p for p in passages if p]

    return list(await asyncio.gather(*(one(q) for q in questions)))


def run_counterfactual(pairs: list[dict], store, llm, k: int = 5, max_new_tokens: int = 64,
                       batch_size: int = 8) -> dict:
    """Ask both questions of every pair through the pipeline and compare (see the module docstring)."""
    service, engine = build_service(store, llm, batch_size, max_new_tokens)
    started = time.perf_counter()
    try:
        questions = [q for pair in pairs for q in (pair["a"], pair["b"])]
        results = asyncio.run(_ask_all(service, questions, k, batch_size))
    finally:
        engine.close()
    rows = []
    for i, pair in enumerate(pairs):
        (ra, pa), (rb, pb) = results[2 * i], results[2 * i + 1]
        rows.append(compare_pair(pair, describe_answer(ra), describe_answer(rb), pa, pb))
    return {"pairs": rows, "by_kind": summarise_pairs(rows), "k": k, "max_new_tokens": max_new_tokens,
            "seconds": round(time.perf_counter() - started, 1), "asks": len(questions)}
