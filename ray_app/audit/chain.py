"""The tamper-evident audit log and the per-answer audit (grounding + prompt-injection flags).

Every ask appends two rows to ``audit_log``: a ``started`` record before generation and a
``completed`` one however the ask ended (answered, cancelled, timeout, error). ``record`` is a JSON
object (its own ``seq`` and ``created_at``, request hash, retrieved ids and the content hashes of the
passages used, model and adapter versions, answer hash, flags, timings, ...) and
``hash = HMAC-SHA256(key, prev_hash + canonical_json(record))``, where canonical JSON is sorted keys,
no spaces, UTF-8, and the key lives outside the database (:mod:`ray_app.audit.checkpoint`). After
every committed append the head checkpoint file gets an authenticated ``(seq, audit_id, hash)`` line.
:func:`verify_chain` finds and names the first bad record: an edit, a removed or reordered row, a
backdated ``created_at``, a chain recomputed without the key, a cut tail or an emptied table, a
forged checkpoint. Appends hold one session advisory lock from reading the previous hash until the
checkpoint line is written, so concurrent replicas keep one chain and the checkpoint only grows.
Migration ``0011_audit_integrity`` makes rows append-only (a trigger refuses UPDATE, DELETE and
TRUNCATE) and ``prev_hash`` unique.

No text is kept in clear (version-3 records): the request and answer hashes are HMACs under the
chain's key (a guessed question cannot be confirmed from the table), and the question and answer
themselves are sealed with AES-GCM (:mod:`ray_app.audit.sealing`) into the row's ``sealed`` column
(migration ``0012_audit_sealed_texts``); the record names the key id and the blob's SHA-256, so the
HMAC covers the ciphertext too.

    prism audit verify [--json]
    prism audit show [ID] [--last N] [--json]
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray_app.audit.checkpoint import HeadFile, HeadState, load_or_create_key, mac_hex
from ray_app.audit.grounding import GroundingReport, check_grounding
from ray_app.audit.injection import injection_flags, looks_like_injection  # noqa: F401 (re-exported)
from ray_app.audit.sealing import SealingError, load_keys, seal, unseal
from ray_app.llm.prompting import Passage

GENESIS_HASH = "0" * 64
RECORD_VERSION = 3  # v3: keyed request/answer hashes and sealed texts; v2: seq, created_at, HMAC; none: plain sha256
RECORD_VERSIONS = (2, 3)
_LOCK_KEY = 0x50_52_49_53_4D  # "PRISM": one advisory lock for the whole chain


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the same object always gives the same string."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_hex(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def chain_hash(prev_hash: str, record: dict) -> str:
    """``sha256(prev_hash + canonical_json(record))``: the hash of records written before HMAC keys (no ``v``)."""
    return sha256_hex(prev_hash + canonical_json(record))


def record_hmac(key: bytes, prev_hash: str, record: dict) -> str:
    """``HMAC-SHA256(key, prev_hash + canonical_json(record))``: the hash of a version-2 record."""
    return mac_hex(key, prev_hash + canonical_json(record))


@dataclass
class AnswerAudit:
    """The audit verdict on one answer, before it is logged."""

    grounded: bool
    flags: list[str]
    grounding: GroundingReport


def audit_answer(question: str, answer: str, passages: list[Passage], embedder=None,
                 picture: str | None = None) -> AnswerAudit:
    """Check an answer: citations exist, sentences supported (grounding), injection attempts.

    ``picture`` is what vision identified the uploaded picture as (see :func:`check_grounding`).

    Flags: ``not_in_sources``, ``no_passages``, ``invalid_citation:<n>``, ``citations_attributed``
    (the model left sentences uncited and they were attributed post hoc), ``unsupported_sentence``,
    ``prompt_injection:...``.
    """
    report = check_grounding(answer, passages, embedder, picture=picture)
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
    """What one logged record says (the ``record`` JSON of an ``audit_log`` row, less ``v``, ``seq`` and
    ``created_at``, which :func:`append_record` adds under the chain's lock).

    ``event`` is ``started`` (before generation) or ``completed``; a completed record's ``status`` is
    ``answered``, ``cancelled`` (the client went away), ``timeout`` or ``error``. ``passages`` holds the
    content hash of every passage the prompt was built from.
    """

    request_hash: str
    retrieved_ids: list[str]
    model: str
    adapter: str | None
    answer_hash: str | None
    flags: list[str]
    grounded: bool | None
    timings_ms: dict[str, float]
    image_encoder: str | None = None
    audit_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    caller: str | None = None  # the API key id (never the key); None when auth is off or outside the API
    ask_id: str | None = None
    event: str = "completed"
    status: str = "answered"
    passages: list[dict] = field(default_factory=list)
    error: str | None = None
    quarantined: list[dict] = field(default_factory=list)  # passages left out of the prompt (injection rules)
    texts: dict[str, str | None] | None = None  # the question (and answer), sealed into the row, never in the record
    trace_id: str | None = None  # the request's OpenTelemetry trace id; the key is absent from records without one

    def to_record(self) -> dict:
        record = {
            "audit_id": self.audit_id,
            "ask_id": self.ask_id or self.audit_id,
            "event": self.event,
            "status": self.status,
            "request_hash": self.request_hash,
            "retrieved_ids": list(self.retrieved_ids),
            "passages": [dict(p) for p in self.passages],
            "quarantined": [dict(p) for p in self.quarantined],
            "model": self.model,
            "adapter": self.adapter,
            "image_encoder": self.image_encoder,
            "answer_hash": self.answer_hash,
            "flags": list(self.flags),
            "grounded": None if self.grounded is None else bool(self.grounded),
            # Rounded so that the JSON survives a jsonb round trip byte for byte.
            "timings_ms": {k: round(float(v), 1) for k, v in sorted(self.timings_ms.items())},
            "caller": self.caller,
            "error": self.error,
        }
        if self.trace_id is not None:  # only when set: a record written without a trace is as it always was
            record["trace_id"] = self.trace_id
        return record


_keys: dict[Path, bytes] = {}


def chain_files(store) -> tuple[Path, Path]:
    """The HMAC key file and the head checkpoint file of ``store``'s chain (from settings)."""
    # Imported here, not at the top: the edge runtime checks answers with this module and has no psycopg.
    from psycopg.conninfo import conninfo_to_dict

    database = conninfo_to_dict(store.url).get("dbname") or "postgres"
    return store.settings.audit_files(database)


def chain_key(path: Path, create: bool = True) -> bytes | None:
    """The HMAC key (cached per process); with ``create=False``, None when the file does not exist."""
    path = Path(path).resolve()
    if path not in _keys:
        if not create and not path.exists():
            return None
        _keys[path] = load_or_create_key(path)
    return _keys[path]


def utc_iso(moment: datetime) -> str:
    """The timestamp as it is hashed: UTC, microseconds, ISO 8601."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def append_record(store, entry: AuditEntry) -> dict:
    """Append ``entry`` to the chain and advance the head checkpoint; returns ``{"seq", "audit_id", "hash"}``.

    A session advisory lock is held from reading the previous record until the checkpoint line is
    fsynced, so appends from any number of processes form one chain and the checkpoint's seq only grows.
    """
    key_path, head_path = chain_files(store)
    head = HeadFile(head_path, chain_key(key_path))
    sealed = None
    if entry.texts is not None:
        sealed = seal(load_keys(store.settings.audit_text_key_path()), entry.audit_id, entry.texts)
    with store.pool.connection() as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            with conn.transaction():
                seq, digest = _insert_record(conn, head.key, entry, sealed)
            head.append(seq, entry.audit_id, digest)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return {"seq": seq, "audit_id": entry.audit_id, "hash": digest}


def _insert_record(conn, key: bytes, entry: AuditEntry, sealed: tuple[str, bytes] | None) -> tuple[int, str]:
    row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS_HASH)
    created_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    record = {"v": RECORD_VERSION, "seq": seq, "created_at": utc_iso(created_at), **entry.to_record()}
    kid, blob = sealed or (None, None)
    if sealed is not None:
        record["sealed"] = {"kid": kid, "sha256": sha256_hex(blob)}
    digest = record_hmac(key, prev, record)
    conn.execute(
        "INSERT INTO audit_log (seq, audit_id, created_at, record, prev_hash, hash, sealed, sealed_key_id)"
        " VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s, %s)",
        (seq, entry.audit_id, created_at, canonical_json(record), prev, digest, blob, kid),
    )
    return seq, digest


def verify_chain(store, batch: int = 5000) -> dict:
    """Walk the chain in ``seq`` order, recompute every hash, then hold it against the head checkpoint.

    Returns:
        ``{"ok", "records", "first_broken": None | {"seq", "audit_id", "reason"}, "head", "checkpoint":
        {"path", "seq", "entries"}, "unanchored", "legacy_records"}``; ``unanchored`` counts records after
        the checkpoint's newest line (appended while this ran, or a crash between commit and checkpoint).
    """
    key_path, head_path = chain_files(store)
    key = chain_key(key_path, create=False)
    # The checkpoint is read before the table: it is written after each commit, so it never runs ahead.
    checkpoint = HeadFile(head_path, key or b"").read() if key else HeadState(Path(head_path))
    import psycopg

    walk = ChainWalk(key, key_path, checkpoint)
    last_seq = 0
    while walk.broken is None:
        try:
            with store.pool.connection() as conn:
                rows = conn.execute(
                    "SELECT seq, audit_id, created_at, record, prev_hash, hash, sealed, sealed_key_id FROM audit_log"
                    " WHERE seq > %s ORDER BY seq LIMIT %s", (last_seq, batch)).fetchall()
        except psycopg.errors.UndefinedTable:
            walk.broken = {"seq": None, "audit_id": None, "reason": "the audit_log table is missing (dropped)"}
            break
        for row in rows:
            if not walk.check(*row):
                break
        if len(rows) < batch:
            break
        last_seq = rows[-1][0]
    broken = walk.broken or walk.check_checkpoint(head_path)
    anchored = checkpoint.last["seq"] if checkpoint.last else 0
    return {
        "ok": broken is None, "records": walk.records, "first_broken": broken, "head": walk.prev,
        "checkpoint": {"path": str(head_path), "seq": checkpoint.last and checkpoint.last["seq"],
                       "entries": checkpoint.entries},
        "unanchored": max(walk.last_seq - anchored, 0) if broken is None else 0,
        "legacy_records": walk.legacy,
    }


class ChainWalk:
    """The state of one verification: the previous hash and seq, counts, the first broken record."""

    def __init__(self, key: bytes | None, key_path: Path, checkpoint: HeadState):
        self.key, self.key_path, self.checkpoint = key, key_path, checkpoint
        self.prev, self.last_seq, self.records, self.legacy, self.authenticated = GENESIS_HASH, 0, 0, 0, 0
        self.broken: dict | None = None

    def check(self, seq: int, audit_id: str, created_at: datetime, record: dict, prev_hash: str,
              digest: str, sealed: bytes | None = None, sealed_key_id: str | None = None) -> bool:
        """Check one row; on the first bad one remember why and return False."""
        legacy = "v" not in record
        reason = self._reason(seq, audit_id, created_at, record, prev_hash, digest, legacy) or \
            _sealed_reason(record, sealed, sealed_key_id)
        if reason:
            self.broken = {"seq": seq, "audit_id": audit_id, "reason": reason}
            return False
        self.prev, self.last_seq, self.records = digest, seq, self.records + 1
        self.legacy += legacy
        self.authenticated += not legacy
        return True

    def _reason(self, seq, audit_id, created_at, record, prev_hash, digest, legacy: bool) -> str | None:
        if prev_hash != self.prev:
            return "prev_hash does not match the previous record's hash (a record was removed, inserted or reordered)"
        if record.get("audit_id") != audit_id:
            return "audit_id column does not match the record"
        anchored = self.checkpoint.tail.get(seq)
        if anchored is not None and (anchored["hash"] != digest or anchored["audit_id"] != audit_id):
            return "record does not match the head checkpoint's line for its seq (the chain was rewritten)"
        if legacy:
            if self.authenticated:
                return "a record in the old unauthenticated format after authenticated ones (forged)"
            return None if chain_hash(prev_hash, record) == digest else \
                "record content does not match its hash (the record was edited)"
        if record.get("v") not in RECORD_VERSIONS:
            return f"unknown record version {record.get('v')!r}"
        if record.get("seq") != seq or (self.last_seq and seq != self.last_seq + 1):
            return f"seq {seq} does not match the record's own seq or follow seq {self.last_seq} (renumbered)"
        if record.get("created_at") != utc_iso(created_at):
            return "created_at column does not match the hashed timestamp (backdated or edited)"
        if self.key is None:
            return f"the HMAC key {self.key_path} is missing, so authenticated records cannot be checked"
        if not hmac.compare_digest(record_hmac(self.key, prev_hash, record), digest):
            return "record content does not match its HMAC (edited, or the chain recomputed without the key)"
        return None

    def check_checkpoint(self, head_path: Path) -> dict | None:
        """After a clean walk: the checkpoint's lines are authentic and the table reaches its newest one."""
        problem, last = self.checkpoint.problem, self.checkpoint.last
        if self.key is None and head_path.exists() and head_path.stat().st_size:
            return {"seq": None, "audit_id": None, "reason": (
                f"the HMAC key {self.key_path} is missing but the head checkpoint {head_path} exists")}
        if problem is not None:
            return {"seq": problem["seq"], "audit_id": problem["audit_id"],
                    "reason": f"{problem['reason']}: line {problem['line']} of {head_path}"}
        if last is None:
            if self.authenticated:
                return {"seq": None, "audit_id": None, "reason": (
                    f"no head checkpoint at {head_path} for {self.authenticated} authenticated records: a cut tail "
                    "cannot be ruled out (the file was removed, or PRISM_AUDIT_DIR points elsewhere)")}
            return None
        if self.last_seq < last["seq"]:
            missing = self.last_seq + 1
            entry = self.checkpoint.tail.get(missing, {})
            cut = "the table was emptied" if self.records == 0 else "the tail was cut"
            return {"seq": missing, "audit_id": entry.get("audit_id"), "reason": (
                f"record missing: the head checkpoint says the chain reached seq {last['seq']}, the table ends "
                f"at seq {self.last_seq} ({cut})")}
        return None


def _sealed_reason(record: dict, sealed: bytes | None, sealed_key_id: str | None) -> str | None:
    """Why the row's sealed texts do not match what its (HMAC-covered) record says, or None."""
    named = record.get("sealed")
    if named is None:
        return None if sealed is None and sealed_key_id is None else "sealed texts on a record that names none"
    if sealed is None or sealed_key_id != named.get("kid") or sha256_hex(bytes(sealed)) != named.get("sha256"):
        return "the sealed texts do not match the record's key id and SHA-256 (replaced or edited)"
    return None


_COLUMNS = "seq, audit_id, created_at, record, prev_hash, hash, sealed, sealed_key_id"
_ROW_KEYS = ("seq", "audit_id", "created_at", "record", "prev_hash", "hash")


def _with_texts(store, rows: list) -> list[dict]:
    """Rows as dicts; each has ``texts``: its question and answer opened with the text keys (an operator's view),
    ``{"error": ...}`` when they do not open, or None for a record without texts."""
    keys = load_keys(store.settings.audit_text_key_path(), create=False) if any(r[6] for r in rows) else None
    out = []
    for row in rows:
        item = dict(zip(_ROW_KEYS, row[:6], strict=True))
        sealed, kid = row[6], row[7]
        item["texts"] = None
        if sealed is not None:
            try:
                if keys is None:
                    raise SealingError(f"no audit text keys at {store.settings.audit_text_key_path()}")
                item["texts"] = unseal(keys, item["audit_id"], kid, sealed)
            except SealingError as exc:
                item["texts"] = {"error": str(exc)}
        out.append(item)
    return out


def get_record(store, audit_id: str) -> dict | None:
    """One audit row as a dict with its opened ``texts`` (or None)."""
    with store.pool.connection() as conn:
        row = conn.execute(f"SELECT {_COLUMNS} FROM audit_log WHERE audit_id = %s", (audit_id,)).fetchone()
    return None if row is None else _with_texts(store, [row])[0]


def ask_records(store, ask_id: str) -> list[dict]:
    """Every record of one ask (``started``, then ``completed``), oldest first, with their opened ``texts``."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM audit_log WHERE audit_id = %s OR record->>'ask_id' = %s ORDER BY seq",
            (ask_id, ask_id)).fetchall()
    return _with_texts(store, rows)


def last_records(store, n: int = 10) -> list[dict]:
    """The newest ``n`` audit rows, newest first, with their opened ``texts``."""
    with store.pool.connection() as conn:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT %s", (n,)).fetchall()
    return _with_texts(store, rows)


def request_hash(key: bytes, question: str, image_sha256: str | None, k: int) -> str:
    """Keyed hash of what was asked (question, image digest, k): an HMAC, so a guessed question cannot be
    confirmed from the table without the key."""
    return mac_hex(key, "request:" + canonical_json({"question": question, "image_sha256": image_sha256, "k": k}))


def answer_hash(key: bytes, answer: str) -> str:
    """Keyed hash of an answer (as :func:`request_hash`)."""
    return mac_hex(key, "answer:" + answer)


def passage_digests(passages: list[Passage]) -> list[dict]:
    """``{"n", "chunk_id", "sha256"}`` per passage: the hash of the title and text the prompt was built from."""
    return [{"n": p.n, "chunk_id": p.chunk_id, "sha256": sha256_hex(canonical_json([p.title, p.text]))}
            for p in passages]


def _base_entry(store, *, ask_id: str, question: str, passages: list[Passage], vision: dict | None, k: int,
                versions: dict, caller: str | None, quarantined: list[Passage], trace_id: str | None = None) -> dict:
    similar_ids = [s["id"] for s in (vision or {}).get("similar_images", [])]
    return dict(
        request_hash=request_hash(chain_key(chain_files(store)[0]), question, (vision or {}).get("image_sha256"), k),
        retrieved_ids=[p.chunk_id for p in passages + quarantined] + similar_ids,
        passages=passage_digests(passages),
        quarantined=passage_digests(quarantined),
        model=versions.get("model") or "",
        adapter=versions.get("adapter"),
        image_encoder=versions.get("image_encoder"),
        ask_id=ask_id,
        caller=caller,
        trace_id=trace_id,
    )


def record_started(store, *, ask_id: str, question: str, passages: list[Passage], vision: dict | None, k: int,
                   versions: dict, caller: str | None = None, extra_flags: list[str] = (),
                   quarantined: list[Passage] = (), trace_id: str | None = None) -> dict:
    """Log that an answer is about to be generated (audit id ``<ask_id>:started``), with the passages' hashes
    and the injection flags of its inputs (``extra_flags``: the pre-generation screening's)."""
    return append_record(store, AuditEntry(
        **_base_entry(store, ask_id=ask_id, question=question, passages=passages, vision=vision, k=k,
                      versions=versions, caller=caller, quarantined=list(quarantined), trace_id=trace_id),
        answer_hash=None, flags=merge_flags(extra_flags, injection_flags(question, passages)), grounded=None,
        timings_ms={}, audit_id=f"{ask_id}:started", event="started", status="started",
        texts={"question": question}))


def merge_flags(*groups) -> list[str]:
    """The flags of every group, in order, each once."""
    return list(dict.fromkeys(f for group in groups for f in group))


def record_answer(store, *, ask_id: str, question: str, answer: str, passages: list[Passage], vision: dict | None,
                  k: int, versions: dict, timings_ms: dict, embedder=None, caller: str | None = None,
                  status: str = "answered", error: str | None = None, extra_flags: list[str] = (),
                  quarantined: list[Passage] = (), trace_id: str | None = None, picture: str | None = None) -> dict:
    """Audit one answer and append its ``completed`` record; returns ``{"grounded", "flags", "citations"}``.

    An answer that did not finish (``status`` ``cancelled``, ``timeout`` or ``error``) is logged with its
    partial text's hash and the injection flags, without the grounding check.
    """
    if status in ("answered", "withheld"):  # withheld: written in full, stopped by the output checks
        verdict = audit_answer(question, answer, passages, embedder, picture)
        grounded, flags, citations = verdict.grounded, verdict.flags, build_citations(passages, verdict.grounding)
    else:
        grounded, flags, citations = None, injection_flags(question, passages) + [f"incomplete:{status}"], []
    flags = merge_flags(extra_flags, flags)
    append_record(store, AuditEntry(
        **_base_entry(store, ask_id=ask_id, question=question, passages=passages, vision=vision, k=k,
                      versions=versions, caller=caller, quarantined=list(quarantined), trace_id=trace_id),
        answer_hash=answer_hash(chain_key(chain_files(store)[0]), answer), flags=flags, grounded=grounded,
        timings_ms=timings_ms, audit_id=ask_id, status=status, error=error,
        texts={"question": question, "answer": answer}))
    return {"grounded": bool(grounded), "flags": flags, "citations": citations}
