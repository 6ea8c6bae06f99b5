"""The guard in front of every ``/v1/*`` request: who is calling (an API key) and whether its limits allow it.

Limits are fixed windows counted in Postgres (``api_key_usage``), so every ingress replica shares
them: requests per minute (one atomic upsert per request, refused once the window is full) and LLM
tokens per UTC day (checked before an answer starts, charged when it ends). The database's clock
sets the windows. ``PRISM_AUTH=off`` admits everyone as an anonymous caller (local development).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field

from ray_app.auth.keys import MissingKey, RevokedKey, check_key
from ray_app.errors import PrismError
from ray_app.settings import Settings, get_settings

log = logging.getLogger(__name__)
_CACHE_MAX = 4096
_CLEANUP_EVERY_S = 600.0

_DAY_START = "(date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
# One round trip per request: the key's limits and revocation, this minute's count (incremented unless the
# window is full: then `counted` is NULL), seconds left in the minute, today's tokens, seconds left today.
_ADMIT = f"""
WITH k AS (SELECT id, rpm, tokens_per_day, revoked_at FROM api_keys WHERE id = %(id)s),
counted AS (
    INSERT INTO api_key_usage AS u (key_id, kind, window_start, used)
    SELECT id, 'requests', date_trunc('minute', now()), 1 FROM k WHERE revoked_at IS NULL
    ON CONFLICT (key_id, kind, window_start) DO UPDATE SET used = u.used + 1 WHERE u.used < (SELECT rpm FROM k)
    RETURNING used)
SELECT k.rpm, k.tokens_per_day, k.revoked_at IS NOT NULL, (SELECT used FROM counted),
       extract(epoch FROM date_trunc('minute', now()) + interval '1 minute' - now())::float8,
       coalesce((SELECT used FROM api_key_usage WHERE key_id = k.id AND kind = 'tokens'
                 AND window_start = {_DAY_START}), 0),
       extract(epoch FROM {_DAY_START} + interval '1 day' - now())::float8
FROM k
"""
_CHARGE_TOKENS = f"""
INSERT INTO api_key_usage AS u (key_id, kind, window_start, used) VALUES (%s, 'tokens', {_DAY_START}, %s)
ON CONFLICT (key_id, kind, window_start) DO UPDATE SET used = u.used + excluded.used
"""


class RateLimited(PrismError):
    """A key's requests per minute or tokens per day are used up (429 with ``Retry-After``)."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, kind: str, retry_after_s: float, headers: dict[str, str]):
        super().__init__(message)
        self.kind, self.retry_after_s, self.headers = kind, retry_after_s, headers


@dataclass
class Admission:
    """An admitted request: the caller's key id (None with auth off) and the ``X-RateLimit-*`` headers."""

    caller: str | None
    headers: dict[str, str] = field(default_factory=dict)


class Guard:
    """Resolves ``Authorization`` headers to keys and applies their limits; one per ingress replica.

    Args:
        store: the Postgres store (its pool runs the queries).
        settings: ``PRISM_AUTH`` and the defaults.
    """

    def __init__(self, store=None, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self.enabled = self.settings.auth == "on"
        self.store = store
        self._verified: dict[str, str] = {}  # sha256(key) -> key id, for keys whose scrypt check passed
        self._verifying: dict[str, threading.Lock] = {}  # sha256(key) -> the lock of the one check running for it
        self._verifying_lock = threading.Lock()
        self._last_cleanup = 0.0
        if not self.enabled:
            log.warning("PRISM_AUTH=off: every /v1/* request is admitted without a key (local development only)")

    def admit(self, authorization: str | None, uses_llm: bool = False) -> Admission:
        """Check the caller's key and count this request (blocking: run it in a thread).

        Raises:
            MissingKey: no bearer key, or an invalid one (401).
            RevokedKey: a revoked key (403).
            RateLimited: the minute's requests or, when ``uses_llm``, the day's tokens are used up (429).
        """
        if not self.enabled:
            return Admission(None)
        key_id = self._verify(bearer_key(authorization))
        with self.store.pool.connection() as conn:
            row = conn.execute(_ADMIT, {"id": key_id}).fetchone()
        if row is None:  # deleted since this replica verified it
            self._verified = {d: k for d, k in self._verified.items() if k != key_id}
            raise MissingKey("the API key is not valid")
        rpm, tokens_per_day, revoked, counted, minute_left, tokens_used, day_left = row
        if revoked:
            raise RevokedKey(f"the API key {key_id} was revoked")
        headers = {"x-ratelimit-limit-requests": str(rpm),
                   "x-ratelimit-remaining-requests": str(rpm - counted if counted else 0),
                   "x-ratelimit-reset-requests": str(max(1, round(minute_left)))}
        if counted is None:
            raise RateLimited(f"key {key_id} has used its {rpm} requests this minute", "requests", minute_left,
                              headers)
        if uses_llm:
            headers |= {"x-ratelimit-limit-tokens": str(tokens_per_day),
                        "x-ratelimit-remaining-tokens": str(max(tokens_per_day - tokens_used, 0)),
                        "x-ratelimit-reset-tokens": str(max(1, round(day_left)))}
            if tokens_used >= tokens_per_day:
                raise RateLimited(f"key {key_id} has used its {tokens_per_day} LLM tokens today (UTC)", "tokens",
                                  day_left, headers)
        self._cleanup()
        return Admission(key_id, headers)

    def charge_tokens(self, caller: str | None, tokens: int) -> None:
        """Add an answer's prompt + completion tokens to the caller's day (no-op with auth off)."""
        if caller is None or tokens <= 0:
            return
        with self.store.pool.connection() as conn:
            conn.execute(_CHARGE_TOKENS, (caller, int(tokens)))

    def _verify(self, key: str) -> str:
        """The key's id once its secret matched the stored scrypt hash (once per process and key).

        Concurrent requests with the same key that is not cached yet run one scrypt check between them (the
        others wait for it): a burst of 60 asks costs one key derivation, not 60 on two cores.
        """
        digest = hashlib.sha256(key.encode()).hexdigest()
        key_id = self._verified.get(digest)
        if key_id is not None:
            return key_id
        with self._verifying_lock:
            lock = self._verifying.setdefault(digest, threading.Lock())
        try:
            with lock:
                key_id = self._verified.get(digest)
                if key_id is None:
                    key_id = check_key(self.store, key).id
                    if len(self._verified) >= _CACHE_MAX:
                        self._verified.clear()
                    self._verified[digest] = key_id
        finally:
            with self._verifying_lock:
                if self._verifying.get(digest) is lock:
                    del self._verifying[digest]
        return key_id

    def _cleanup(self) -> None:
        """Drop usage windows older than two days, at most every ten minutes per replica."""
        now = time.monotonic()
        if now - self._last_cleanup < _CLEANUP_EVERY_S:
            return
        self._last_cleanup = now
        with self.store.pool.connection() as conn:
            conn.execute("DELETE FROM api_key_usage WHERE window_start < now() - interval '2 days'")


def bearer_key(authorization: str | None) -> str:
    """The key in ``Authorization: Bearer KEY``.

    Raises:
        MissingKey: no such header.
    """
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise MissingKey("this route needs `Authorization: Bearer KEY` (create a key with `prism keys create NAME`)")
    return value.strip()
