"""Health and readiness of the Serve graph: what Serve's probe restarts, and what ``/readyz`` reports.

Each deployment has two checks. ``check_health`` is Serve's probe (every ``health_check_period_s``):
it fails only for what a new replica would fix (a dead decode loop, a model that is not loaded, a
closed connection pool), because Serve replaces a replica that fails it. A database that is down is
not such a fault: restarting every model would turn a short outage into a long one, and the pool
reconnects by itself. ``ready`` is what ``/readyz`` asks of every deployment, uncached: the replica's
models and one round trip to the database.
"""

from __future__ import annotations

import asyncio
import time

from serving import faults


class NotReady(RuntimeError):
    """A replica cannot serve (raised by ``check_health`` and ``ready``)."""


def check_loaded(**parts) -> None:
    """Raise :class:`NotReady` naming every part (model, analyzer, store) that is missing."""
    missing = [name for name, part in parts.items() if part is None]
    if missing:
        raise NotReady(f"not loaded: {', '.join(missing)}")


def check_store(store) -> None:
    """A closed pool never recovers (the replica must be replaced); a database that is down does."""
    if store is None or not store.usable():
        raise NotReady("the store's connection pool is closed")


def ready_store(store) -> dict:
    """``{"database": "ok"}`` after one round trip; raises ``StoreError`` when it cannot be reached."""
    check_store(store)
    store.ping()
    return {"database": "ok"}


async def readiness(handles: dict, timeout_s: float) -> tuple[bool, dict]:
    """Ask every deployment's ``ready`` at once (one replica each, within ``timeout_s``).

    Returns:
        ``(ready, checks)``: ``checks[name]`` is ``{"ok": True, ...what it reported, "ms"}`` or
        ``{"ok": False, "error": code, "message"}``.
    """

    async def one(name: str, handle) -> dict:
        start = time.perf_counter()
        try:
            out = await faults.call(lambda: handle.ready.remote(), timeout_s, name)
        except Exception as exc:  # noqa: BLE001 - any failure is an answer here: not ready
            return {"ok": False, "error": faults.error_code(exc), "message": str(exc).splitlines()[0][:300]
                    if str(exc) else type(exc).__name__}
        return {"ok": True, **(out or {}), "ms": round((time.perf_counter() - start) * 1000, 1)}

    names = list(handles)
    results = await asyncio.gather(*(one(n, handles[n]) for n in names))
    checks = dict(zip(names, results, strict=True))
    return all(c["ok"] for c in checks.values()), checks
