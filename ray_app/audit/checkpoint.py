"""What anchors the audit chain outside the database: the HMAC key and the append-only head checkpoint.

Both live under ``$PRISM_HOME/audit/`` by default (``PRISM_AUDIT_DIR``, ``PRISM_AUDIT_KEY_FILE`` and
``PRISM_AUDIT_HEAD_FILE`` move them), so ``prism audit verify`` needs no extra environment:

    hmac.key               32 random bytes in hex, created 0600 on first use; every record's hash is
                           HMAC-SHA256 under it, so rows rewritten from the database alone do not verify
    head-<database>.log    one line per committed append, ``{"seq", "audit_id", "hash", "at", "mac"}``,
                           fsynced; the newest line says how far the chain reached, so a cut tail (even
                           of one record) or an emptied table is found
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import stat
import time
from collections import deque
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

log = logging.getLogger(__name__)

KEY_BYTES = 32
TAIL_ENTRIES = 100_000  # head entries kept in memory to name records missing from the database


def load_or_create_key(path: Path) -> bytes:
    """The HMAC key at ``path``; created (0600, atomically, once even under racing processes) if absent.

    Raises:
        ValueError: the file exists but does not hold a hex key of at least 32 bytes.
    """
    path = Path(path)
    if not path.exists():
        _create_key(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("the audit HMAC key %s is readable by others (mode %o); chmod 600 it", path, mode)
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path} does not hold a hex HMAC key of at least {KEY_BYTES} bytes")
    return key


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_bytes(KEY_BYTES).hex() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created the key first: keep theirs
        _fsync_dir(path.parent)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mac_hex(key: bytes, message: str) -> str:
    """HMAC-SHA256 of ``message`` (UTF-8) under ``key``, as hex."""
    return hmac.new(key, message.encode(), sha256).hexdigest()


def _line_message(entry: dict) -> str:
    # "head:" separates checkpoint MACs from record hashes made with the same key.
    body = {k: entry[k] for k in ("seq", "audit_id", "hash", "at")}
    return "head:" + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class HeadState:
    """What the head file says: its newest entry, the recent entries by seq, and the first bad line."""

    path: Path
    entries: int = 0
    last: dict | None = None
    tail: dict[int, dict] = field(default_factory=dict)
    problem: dict | None = None  # {"line", "seq", "audit_id", "reason"}


class HeadFile:
    """The append-only head checkpoint of one database's chain.

    Args:
        path: the file (``head-<database>.log`` under the audit folder by default).
        key: the HMAC key that authenticates every line.
    """

    def __init__(self, path: Path, key: bytes):
        self.path, self.key = Path(path), key

    def append(self, seq: int, audit_id: str, digest: str) -> None:
        """Add one authenticated line and fsync it (the caller holds the chain's lock)."""
        entry = {"seq": seq, "audit_id": audit_id, "hash": digest, "at": round(time.time(), 3)}
        entry["mac"] = mac_hex(self.key, _line_message(entry))
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            _fsync_dir(self.path.parent)

    def read(self) -> HeadState:
        """Check every line's MAC and that seq only grows; keep the newest entries."""
        state = HeadState(self.path)
        if not self.path.exists():
            return state
        tail: deque[dict] = deque(maxlen=TAIL_ENTRIES)
        with self.path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                entry, reason = self._check_line(raw, state.last)
                if reason:
                    state.problem = {"line": number, "seq": (entry or {}).get("seq"),
                                     "audit_id": (entry or {}).get("audit_id"), "reason": reason}
                    break
                state.entries, state.last = state.entries + 1, entry
                tail.append(entry)
        state.tail = {e["seq"]: e for e in tail}
        return state

    def _check_line(self, raw: bytes, previous: dict | None) -> tuple[dict | None, str | None]:
        try:
            entry = json.loads(raw)
            ok = isinstance(entry, dict) and isinstance(entry.get("seq"), int) and isinstance(entry.get("mac"), str)
            expected = mac_hex(self.key, _line_message(entry)) if ok else ""
        except (ValueError, KeyError, TypeError):
            return None, "the head checkpoint has an unreadable line"
        if not ok or not hmac.compare_digest(expected, entry["mac"]):
            return entry, "the head checkpoint has a line whose HMAC does not match (forged or edited)"
        if previous is not None and entry["seq"] <= previous["seq"]:
            return entry, (f"the head checkpoint went back from seq {previous['seq']} to {entry['seq']} "
                           "(the chain was cut and grown again)")
        return entry, None
