"""Retry-safe asks: an ``Idempotency-Key`` header makes a retried ask return the first answer.

A client that lost its connection (or got a 503 after a replica failed) retries with the same key; the
first ask that completes stores its ``/v1/ask`` response, and every retry with the same key and the
same request gets that response back without a second ask: no second pair of audit records, no second
charge to the key's tokens per day. State lives in Postgres (``ask_idempotency``), so the retry may
land on any ingress replica. While the first ask still runs, a retry gets 409 with ``Retry-After``; a
key reused for another request gets 422. An ask that fails gives its key back (the retry runs anew).

Who runs a claimed ask is a Postgres session: the claimer holds a session advisory lock on the key (on its
own connection) until the ask completes or fails. An ingress replica that dies loses its session, and with
it the lock, at once; so a retry that finds the key pending but can take the lock knows the first ask's
runner is gone and takes the claim over (a client's retry after an ingress was killed is answered, not
told "still running" for minutes).

Nothing in the table reads in clear: the stored response is sealed with the audit log's text keys
(AES-256-GCM, :mod:`ray_app.audit.sealing`, bound to its caller and key), and the request hash is an
HMAC under the audit chain's key, so a guessed question cannot be confirmed from the table.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field

import psycopg

from ray_app.audit.chain import chain_files, chain_key
from ray_app.audit.checkpoint import mac_hex
from ray_app.audit.sealing import load_keys, seal, unseal
from ray_app.errors import InputError, PrismError
from ray_app.settings import Settings, get_settings

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces (as Stripe and the IETF draft use)

# Claim the key (its advisory lock held): a new row, an expired one, or a pending one whose runner is gone.
_CLAIM = """
INSERT INTO ask_idempotency AS i (caller, key, request_hash, state) VALUES (%(caller)s, %(key)s, %(hash)s, 'pending')
ON CONFLICT (caller, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, state = 'pending', response = NULL,
    created_at = now(), updated_at = now()
WHERE (i.state = 'pending' AND i.request_hash = EXCLUDED.request_hash)
   OR i.created_at < now() - make_interval(secs => %(ttl_s)s)
RETURNING 1
"""


class IdempotencyConflict(PrismError):
    """The first ask with this key is still running (409 with ``Retry-After``)."""

    code = "idempotency_key_in_use"

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class IdempotencyKeyReused(InputError):
    """The key was used for a different request (422)."""

    code = "idempotency_key_reused"


def check_key(key: str) -> str:
    """The header's value, or :class:`InputError` (422) for one that is empty, too long or not printable ASCII."""
    key = key.strip()
    if not _KEY.match(key):
        raise InputError("Idempotency-Key must be 1-255 printable ASCII characters without spaces")
    return key


def request_hash(fields: dict, image: bytes | None) -> str:
    """sha256 of the request's fields (canonical JSON) and the image's bytes."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode())
    digest.update(b"\0" + (hashlib.sha256(image).digest() if image else b""))
    return digest.hexdigest()


@dataclass
class Claim:
    """The outcome of :meth:`IdempotencyStore.claim`: a stored ``response`` to replay, or the right to run
    (then ``owner`` is the connection whose session holds the key's advisory lock until complete/release)."""

    caller: str
    key: str
    response: dict | None = None
    owner: psycopg.Connection | None = field(default=None, repr=False)


def _lock_id(caller: str, key: str) -> int:
    """The key's advisory lock: a signed 64-bit number from sha256(caller, key)."""
    return int.from_bytes(hashlib.sha256(f"{caller}\0{key}".encode()).digest()[:8], "big", signed=True)


class IdempotencyStore:
    """The ``ask_idempotency`` table (blocking calls: run them in a thread).

    Args:
        store: the Postgres store.
        settings: ``PRISM_IDEMPOTENCY_TTL_S``, ``PRISM_ASK_TIMEOUT_S``, ``PRISM_RETRY_AFTER_S``.
    """

    def __init__(self, store, settings: Settings | None = None):
        self.store, self.settings = store, settings or get_settings()

    def _keyed(self, req_hash: str) -> str:
        return mac_hex(chain_key(chain_files(self.store)[0]), "idempotency-request:" + req_hash)

    def _seal(self, caller: str, key: str, response: dict) -> dict:
        kid, blob = seal(load_keys(self.settings.audit_text_key_path()), _bound(caller, key),
                         {"response": json.dumps(response)})
        return {"kid": kid, "sealed": base64.b64encode(blob).decode()}

    def _unseal(self, caller: str, key: str, stored: dict) -> dict:
        keys = load_keys(self.settings.audit_text_key_path())
        texts = unseal(keys, _bound(caller, key), stored["kid"], base64.b64decode(stored["sealed"]))
        return json.loads(texts["response"])

    def claim(self, caller: str | None, key: str, req_hash: str) -> Claim:
        """Claim ``key`` for a new ask, or return the stored answer of the ask that already completed with it.

        Raises:
            IdempotencyConflict: that ask is still running.
            IdempotencyKeyReused: the key belongs to another request.
        """
        caller = caller or ""
        keyed_hash = self._keyed(req_hash)
        owner = psycopg.connect(self.store.url, autocommit=True, connect_timeout=10)
        try:
            if not owner.execute("SELECT pg_try_advisory_lock(%s)", (_lock_id(caller, key),)).fetchone()[0]:
                raise IdempotencyConflict(f"an ask with the Idempotency-Key {key!r} is still running; retry later",
                                          self.settings.retry_after_s)
            params = {"caller": caller, "key": key, "hash": keyed_hash, "ttl_s": self.settings.idempotency_ttl_s}
            if owner.execute(_CLAIM, params).fetchone() is not None:  # new, expired, or its runner is gone
                return Claim(caller, key, owner=owner)
            stored_hash, response = owner.execute(
                "SELECT request_hash, response FROM ask_idempotency WHERE caller = %s AND key = %s",
                (caller, key)).fetchone()
        except BaseException:
            owner.close()
            raise
        owner.close()  # a completed ask's key (or another request's): nothing to run, nothing to hold
        if stored_hash != keyed_hash:
            raise IdempotencyKeyReused(f"the Idempotency-Key {key!r} was used for a different request")
        return Claim(caller, key, self._unseal(caller, key, response))

    def complete(self, claim: Claim, response: dict) -> None:
        """Store the answer of the claimed ask, and let the key go."""
        from psycopg.types.json import Jsonb

        try:
            with self.store.pool.connection() as conn:
                conn.execute("UPDATE ask_idempotency SET state = 'done', response = %s, updated_at = now()"
                             " WHERE caller = %s AND key = %s",
                             (Jsonb(self._seal(claim.caller, claim.key, response)), claim.caller, claim.key))
        finally:
            _let_go(claim)

    def release(self, claim: Claim) -> None:
        """Give the key back after the ask failed (a retry runs it anew)."""
        try:
            with self.store.pool.connection() as conn:
                conn.execute("DELETE FROM ask_idempotency WHERE caller = %s AND key = %s AND state = 'pending'",
                             (claim.caller, claim.key))
        finally:
            _let_go(claim)


def _let_go(claim: Claim) -> None:
    """End the claim's session (its advisory lock goes with it)."""
    if claim.owner is not None:
        claim.owner.close()
        claim.owner = None


def _bound(caller: str, key: str) -> str:
    """What a sealed response is bound to (the AEAD's associated data): it opens only in its own row."""
    return f"idempotency:{caller}:{key}"
