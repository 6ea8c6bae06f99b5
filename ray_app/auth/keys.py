"""API keys: create, list, revoke and verify; only a salted scrypt hash of each key is stored.

    prism keys create NAME [--rpm N] [--tokens-per-day N] [--json]   # the key is shown once
    prism keys list [--json]
    prism keys revoke ID_OR_NAME [--json]

A key reads ``prism_<id>_<secret>``: ``id`` (12 hex digits) names its row and may be logged or
written to the audit log; ``secret`` (64 hex digits, 256 bits) is checked against
``scrypt(secret, salt)`` and never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from ray_app.errors import InputError, NotFound, PrismError

PREFIX = "prism"
_KEY = re.compile(r"^prism_([0-9a-f]{12})_([0-9a-f]{64})$")
SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # ~16 MiB and tens of ms per check; verified keys are cached per process
KDF_NAME = "scrypt:n=16384,r=8,p=1"


class AuthError(PrismError):
    """Base of the key errors (the ingress maps each to its status)."""


class MissingKey(AuthError):
    """No ``Authorization: Bearer KEY`` header, or a key that is not Prism's, unknown or wrong (401)."""

    code = "invalid_api_key"


class RevokedKey(AuthError):
    """A key that was revoked (403)."""

    code = "revoked_api_key"


@dataclass(frozen=True)
class ApiKey:
    """One key's row, without its hash."""

    id: str
    name: str
    rpm: int
    tokens_per_day: int
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "rpm": self.rpm, "tokens_per_day": self.tokens_per_day,
                "created_at": self.created_at.isoformat() if self.created_at else None,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


def hash_secret(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, dklen=32, maxmem=64 * 1024 * 1024, **SCRYPT)


def parse_key(key: str) -> tuple[str, str]:
    """``(id, secret)`` of a well-formed key.

    Raises:
        MissingKey: the string is not a Prism key.
    """
    match = _KEY.match(key.strip())
    if match is None:
        raise MissingKey("the API key is not valid (expected prism_<id>_<secret>; create one with `prism keys create`)")
    return match.group(1), match.group(2)


def create_key(store, name: str, rpm: int, tokens_per_day: int) -> tuple[ApiKey, str]:
    """Store a new key's hash; returns the row and the key itself (shown to the caller once).

    Raises:
        InputError: an empty name or a limit below 1.
    """
    name = name.strip()
    if not name:
        raise InputError("a key needs a name")
    if rpm < 1 or tokens_per_day < 1:
        raise InputError("--rpm and --tokens-per-day must be at least 1")
    key_id, secret, salt = secrets.token_hex(6), secrets.token_hex(32), secrets.token_bytes(16)
    with store.pool.connection() as conn:
        row = conn.execute(
            "INSERT INTO api_keys (id, name, kdf, salt, hash, rpm, tokens_per_day) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " RETURNING created_at",
            (key_id, name, KDF_NAME, salt, hash_secret(secret, salt), rpm, tokens_per_day)).fetchone()
    return ApiKey(key_id, name, rpm, tokens_per_day, row[0]), f"{PREFIX}_{key_id}_{secret}"


def list_keys(store) -> list[ApiKey]:
    """Every key, oldest first (revoked ones included, with ``revoked_at``)."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, name, rpm, tokens_per_day, created_at, revoked_at FROM api_keys ORDER BY created_at, id"
        ).fetchall()
    return [ApiKey(*r) for r in rows]


def revoke_key(store, id_or_name: str) -> list[ApiKey]:
    """Revoke the key with this id, or every live key with this name; returns the keys revoked.

    Raises:
        NotFound: no live key has that id or name.
    """
    with store.pool.connection() as conn:
        rows = conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE (id = %s OR name = %s) AND revoked_at IS NULL"
            " RETURNING id, name, rpm, tokens_per_day, created_at, revoked_at", (id_or_name, id_or_name)).fetchall()
    if not rows:
        raise NotFound(f"no live key with id or name {id_or_name!r} (see `prism keys list`)")
    return [ApiKey(*r) for r in rows]


def check_key(store, key: str) -> ApiKey:
    """The row of ``key`` after checking its secret against the stored hash.

    Raises:
        MissingKey: malformed, unknown or wrong.
        RevokedKey: revoked.
    """
    key_id, secret = parse_key(key)
    with store.pool.connection() as conn:
        row = conn.execute(
            "SELECT id, name, rpm, tokens_per_day, created_at, revoked_at, salt, hash FROM api_keys WHERE id = %s",
            (key_id,)).fetchone()
    if row is None or not hmac.compare_digest(hash_secret(secret, bytes(row[6])), bytes(row[7])):
        raise MissingKey("the API key is not valid")
    found = ApiKey(*row[:6])
    if found.revoked_at is not None:
        raise RevokedKey(f"the API key {found.id} was revoked")
    return found
