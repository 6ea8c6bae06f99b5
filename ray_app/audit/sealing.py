"""The audit log's texts at rest: each record's question and answer, sealed with AES-256-GCM.

The keys live outside the database: ``PRISM_AUDIT_TEXT_KEYS`` (``kid:hex[,kid:hex...]``) when set,
else the key file (``PRISM_AUDIT_TEXT_KEY_FILE``, default ``$PRISM_HOME/audit/texts.key`` beside the
chain's HMAC key; created 0600 on first use). The file holds one ``<kid> <64 hex digits>`` line per
key; the last one seals new records, the others still open old ones. Each sealed blob is
``nonce (12 bytes) + ciphertext + tag``; the associated data binds it to its record's audit id and key
id, so a blob moved to another record does not open. The record itself (which the chain's HMAC
covers) names the key id and the blob's SHA-256.

    prism audit rotate-key      # append a new key: new records use it, old ones still open
    prism audit show ID         # decrypts the question and answer for an operator
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from ray_app.errors import PrismError

KEY_BYTES = 32
NONCE_BYTES = 12
ENV_KEYS = "PRISM_AUDIT_TEXT_KEYS"


class SealingError(PrismError):
    """A key that is missing, malformed, or a blob that does not open under it."""

    code = "audit_key_error"


@dataclass(frozen=True)
class TextKeys:
    """The key ring: every key by id, and the id that seals new records."""

    keys: dict[str, bytes]
    active: str
    source: str  # the file, or the environment variable


def parse_keys(lines: list[str], source: str) -> TextKeys:
    """Keys from ``kid hex`` (file) or ``kid:hex`` (environment) entries; the last one is active.

    Raises:
        SealingError: no key, or an entry that is not a key id and 32 bytes in hex.
    """
    keys: dict[str, bytes] = {}
    active = None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kid, _, value = line.replace(":", " ", 1).partition(" ")
        try:
            key = bytes.fromhex(value.strip())
        except ValueError:
            key = b""
        if not kid.isalnum() or len(key) != KEY_BYTES:
            raise SealingError(f"{source}: entry {n} is not '<key id> <{KEY_BYTES * 2} hex digits>'")
        keys[kid], active = key, kid
    if active is None:
        raise SealingError(f"{source} holds no key")
    return TextKeys(keys, active, source)


def new_key_line() -> str:
    return f"{secrets.token_hex(4)} {secrets.token_bytes(KEY_BYTES).hex()}\n"


def add_key(path: Path) -> str:
    """Append a new key to the key file (created 0600 when absent); returns its id (the file's active key now)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = new_key_line()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return line.split()[0]


_cache: dict[Path, tuple[float, TextKeys]] = {}


def load_keys(path: Path, create: bool = True) -> TextKeys | None:
    """The key ring: from ``PRISM_AUDIT_TEXT_KEYS`` when set, else from ``path`` (created with one key when
    absent and ``create``; re-read when the file changes, so a rotation reaches running replicas).

    Returns None when there is no key and ``create`` is False.
    """
    env = os.environ.get(ENV_KEYS, "").strip()
    if env:
        return parse_keys(env.split(","), ENV_KEYS)
    path = Path(path).resolve()
    if not path.exists():
        if not create:
            return None
        _create(path)
    mtime = path.stat().st_mtime_ns
    cached = _cache.get(path)
    if cached is None or cached[0] != mtime:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            raise SealingError(f"the audit text key file {path} is readable by others; chmod 600 it")
        _cache[path] = (mtime, parse_keys(path.read_text().splitlines(), str(path)))
    return _cache[path][1]


def _create(path: Path) -> None:
    """Write a one-key file atomically; a process that loses the race keeps the winner's file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, new_key_line().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _aad(audit_id: str, kid: str) -> bytes:
    return f"prism-audit-texts:v1:{audit_id}:{kid}".encode()


def seal(keys: TextKeys, audit_id: str, texts: dict[str, str | None]) -> tuple[str, bytes]:
    """``(key id, nonce + ciphertext)`` of ``texts`` as JSON, under the active key."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(NONCE_BYTES)
    plain = json.dumps(texts, sort_keys=True, ensure_ascii=False).encode()
    return keys.active, nonce + AESGCM(keys.keys[keys.active]).encrypt(nonce, plain, _aad(audit_id, keys.active))


def unseal(keys: TextKeys, audit_id: str, kid: str, blob: bytes) -> dict[str, str | None]:
    """The texts sealed in ``blob`` for ``audit_id``.

    Raises:
        SealingError: the key ``kid`` is not in the ring, or the blob does not open (edited, or moved
            from another record).
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if kid not in keys.keys:
        raise SealingError(f"the audit text key {kid!r} is not in {keys.source} (rotated out?)")
    blob = bytes(blob)
    try:
        plain = AESGCM(keys.keys[kid]).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(audit_id, kid))
    except InvalidTag as exc:
        raise SealingError(f"the sealed texts of {audit_id} do not open under key {kid!r} (edited or moved)") from exc
    return json.loads(plain)
