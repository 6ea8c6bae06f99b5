"""The tamper-evident audit log and the per-answer audit (grounding + prompt-injection flags).

Every answer appends one row to ``audit_log``: ``record`` is a JSON object (request hash,
retrieved ids, model and adapter versions, answer hash, flags, timings, ...) and
``hash = sha256(prev_hash + canonical_json(record))``, where canonical JSON is sorted keys, no
spaces, UTF-8. Editing, deleting or reordering any row breaks the chain at that row, which
:func:`verify_chain` names. Appends are serialised with a transaction-scoped advisory lock, so
concurrent replicas keep one chain.

    prism audit verify [--json]
    prism audit show [--last N] [--json]
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from ray_app.audit.grounding import GroundingReport, check_grounding
from ray_app.llm.prompting import Passage

GENESIS_HASH = "0" * 64
_LOCK_KEY = 0x50_52_49_53_4D  # "PRISM": one advisory lock for the whole chain
INJECTION_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\b(ignore|disregard|forget|override)\b.{0,40}\b(previous|prior|above|earlier|all|any|your)\b.{0,20}"
        r"\b(instruction|prompt|rule|direction|message)s?\b",
        r"\b(reveal|print|show|repeat|leak)\b.{0,30}\b(system prompt|instructions|hidden prompt)\b",
        r"\byou are now\b|\bact as (an? )?(unrestricted|jailbroken|dan)\b|\bdo anything now\b|\bjailbreak\b",
        r"</?\s*(system|assistant|im_start|im_end)\s*>|<\|im_(start|end)\|>",
        r"\bnew instructions?\s*:",
    )
]


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the same object always gives the same string."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_hex(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def chain_hash(prev_hash: str, record: dict) -> str:
    """``sha256(prev_hash + canonical_json(record))``."""
    return sha256_hex(prev_hash + canonical_json(record))


def injection_flags(question: str, passages: list[Passage]) -> list[str]:
    """Flags for text that tries to give the model instructions: ``prompt_injection:question`` and
    ``prompt_injection:passage:<n>`` (passages are data; the flag says one tried to be a command)."""
    flags = []
    if looks_like_injection(question):
        flags.append("prompt_injection:question")
    flags += [f"prompt_injection:passage:{p.n}" for p in passages if looks_like_injection(p.text)]
    return flags


def looks_like_injection(text: str) -> bool:
    return any(p.search(text or "") for p in INJECTION_PATTERNS)


@dataclass
class AnswerAudit:
    """The audit verdict on one answer, before it is logged."""

    grounded: bool
    flags: list[str]
    grounding: GroundingReport


def audit_answer(question: str, answer: str, passages: list[Passage], embedder=None) -> AnswerAudit:
    """Check an answer: citations exist, sentences supported (grounding), injection attempts.

    Flags: ``not_in_sources``, ``no_passages``, ``invalid_citation:<n>``, ``citations_attributed``
    (the model left sentences uncited and they were attributed post hoc), ``unsupported_sentence``,
    ``prompt_injection:...``.
    """
    report = check_grounding(answer, passages, embedder)
    flags = injection_flags(question, passages)
    if report.not_in_sources:
        flags.append("not_in_sources")
    if not passages:
        flags.append("no_passages")
    flags += [f"invalid_citation:{n}" for n in report.invalid_citations]
    if report.attributed:
        flags.append("citations_attributed")
    if any(not s.supported for s in report.sentences):
        flags.append("unsupported_sentence")
    return AnswerAudit(report.grounded, flags, report)


def build_citations(passages: list[Passage], report: GroundingReport) -> list[dict]:
    """Citations for the response: passages the answer cites, then those attributed post hoc."""
    by_n = {p.n: p for p in passages}
    explicit = [n for n in report.cited if n in by_n]
    attributed = [n for n in report.attributed if n not in explicit]
    return [
        {
            "n": n,
            "doc_id": by_n[n].doc_id,
            "chunk_id": by_n[n].chunk_id,
            "title": by_n[n].title,
            "snippet": by_n[n].text[:300],
            "score": by_n[n].score,
            "attributed": n in attributed,
        }
        for n in explicit + attributed
    ]


@dataclass
class AuditEntry:
    """What one logged answer records (the ``record`` JSON of an ``audit_log`` row)."""

    request_hash: str
    retrieved_ids: list[str]
    model: str
    adapter: str | None
    answer_hash: str
    flags: list[str]
    grounded: bool
    timings_ms: dict[str, float]
    image_encoder: str | None = None
    audit_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    caller: str | None = None  # the API key id (never the key); None when auth is off or outside the API

    def to_record(self) -> dict:
        return {
            "audit_id": self.audit_id,
            "request_hash": self.request_hash,
            "retrieved_ids": list(self.retrieved_ids),
            "model": self.model,
            "adapter": self.adapter,
            "image_encoder": self.image_encoder,
            "answer_hash": self.answer_hash,
            "flags": list(self.flags),
            "grounded": bool(self.grounded),
            # Rounded so that the JSON survives a jsonb round trip byte for byte.
            "timings_ms": {k: round(float(v), 1) for k, v in sorted(self.timings_ms.items())},
            "caller": self.caller,
        }


def append_record(store, entry: AuditEntry) -> dict:
    """Append ``entry`` to the chain in one transaction; returns ``{"seq", "audit_id", "hash"}``."""
    record = entry.to_record()
    with store.pool.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        row = conn.execute("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        prev = row[0] if row else GENESIS_HASH
        digest = chain_hash(prev, record)
        seq = conn.execute(
            "INSERT INTO audit_log (audit_id, record, prev_hash, hash) VALUES (%s, %s::jsonb, %s, %s) RETURNING seq",
            (entry.audit_id, canonical_json(record), prev, digest),
        ).fetchone()[0]
    return {"seq": seq, "audit_id": entry.audit_id, "hash": digest}


def verify_chain(store, batch: int = 5000) -> dict:
    """Walk the chain in ``seq`` order and recompute every hash.

    Returns:
        ``{"ok", "records", "first_broken": None | {"seq", "audit_id", "reason"}, "head"}``.
    """
    prev, count, last_seq = GENESIS_HASH, 0, 0
    while True:
        with store.pool.connection() as conn:
            rows = conn.execute(
                "SELECT seq, audit_id, record, prev_hash, hash FROM audit_log WHERE seq > %s ORDER BY seq LIMIT %s",
                (last_seq, batch),
            ).fetchall()
        for seq, audit_id, record, prev_hash, digest in rows:
            reason = _broken_reason(prev, audit_id, record, prev_hash, digest)
            if reason:
                broken = {"seq": seq, "audit_id": audit_id, "reason": reason}
                return {"ok": False, "records": count, "first_broken": broken, "head": prev}
            prev, count, last_seq = digest, count + 1, seq
        if len(rows) < batch:
            return {"ok": True, "records": count, "first_broken": None, "head": prev}


def _broken_reason(expected_prev: str, audit_id: str, record: dict, prev_hash: str, digest: str) -> str | None:
    if prev_hash != expected_prev:
        return "prev_hash does not match the previous record's hash (a record was removed or reordered)"
    if record.get("audit_id") != audit_id:
        return "audit_id column does not match the record"
    if chain_hash(prev_hash, record) != digest:
        return "record content does not match its hash (the record was edited)"
    return None


def get_record(store, audit_id: str) -> dict | None:
    """One audit row as a dict (or None)."""
    with store.pool.connection() as conn:
        row = conn.execute(
            "SELECT seq, audit_id, created_at, record, prev_hash, hash FROM audit_log WHERE audit_id = %s", (audit_id,)
        ).fetchone()
    keys = ("seq", "audit_id", "created_at", "record", "prev_hash", "hash")
    return None if row is None else dict(zip(keys, row, strict=True))


def last_records(store, n: int = 10) -> list[dict]:
    """The newest ``n`` audit rows, newest first."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            "SELECT seq, audit_id, created_at, record, prev_hash, hash FROM audit_log ORDER BY seq DESC LIMIT %s", (n,)
        ).fetchall()
    keys = ("seq", "audit_id", "created_at", "record", "prev_hash", "hash")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def request_hash(question: str, image_sha256: str | None, k: int) -> str:
    """Hash of what was asked (question, image digest, k), for the audit record."""
    return sha256_hex(canonical_json({"question": question, "image_sha256": image_sha256, "k": k}))


def record_answer(store, *, ask_id: str, question: str, answer: str, passages: list[Passage], vision: dict | None,
                  k: int, versions: dict, timings_ms: dict, embedder=None, caller: str | None = None) -> dict:
    """Audit one answer and append it to the chain; returns ``{"grounded", "flags", "citations"}``."""
    verdict = audit_answer(question, answer, passages, embedder)
    similar_ids = [s["id"] for s in (vision or {}).get("similar_images", [])]
    append_record(store, AuditEntry(
        request_hash=request_hash(question, (vision or {}).get("image_sha256"), k),
        retrieved_ids=[p.chunk_id for p in passages] + similar_ids,
        model=versions.get("model") or "",
        adapter=versions.get("adapter"),
        image_encoder=versions.get("image_encoder"),
        answer_hash=sha256_hex(answer),
        flags=verdict.flags,
        grounded=verdict.grounded,
        timings_ms=timings_ms,
        audit_id=ask_id,
        caller=caller,
    ))
    return {"grounded": verdict.grounded, "flags": verdict.flags,
            "citations": build_citations(passages, verdict.grounding)}
