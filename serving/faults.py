"""Failures below the ingress, as a client sees them: honest status codes, bounded waits, one retry.

A full queue (Ray Serve's ``BackPressureError``), a replica that died or cannot be reached
(``RayActorError``, ``ActorUnavailableError``, ``ReplicaUnavailableError``, ``DeploymentUnavailableError``),
a stage that did not answer in time (:class:`StageTimeout`) and a database that cannot be reached
(psycopg's ``OperationalError``, the pool's ``PoolTimeout``, :class:`ray_app.store.StoreError`) are the
service's trouble, not the client's: each maps to 503 with ``Retry-After`` (:func:`classify`), never to a
500; only a bug is a 500. Ray delivers a replica's exception wrapped in ``RayTaskError``; :func:`causes`
unwraps it. :func:`call` bounds every handle call by a timeout and retries once, on another replica, a
call whose replica failed before answering (the router drops a dead replica from its set).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import psycopg
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from ray_app.errors import PrismError, Unavailable

log = logging.getLogger(__name__)

REPLICA_FAILURES = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)


class StageTimeout(Unavailable, TimeoutError):
    """A deployment did not answer (or send the next piece of a stream) within ``PRISM_HANDLE_TIMEOUT_S``."""

    code = "timeout"


class ReplicaFailed(Unavailable):
    """A replica died or became unreachable under a request (after the one retry)."""

    code = "replica_unavailable"


@dataclass(frozen=True)
class Fault:
    """How a failure is answered: the HTTP status, the error code, a one-line message, when to come back."""

    status: int
    code: str
    message: str
    retry_after_s: float | None = None


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: a ``RayTaskError``'s ``cause``, then ``__cause__`` / ``__context__``."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, RayTaskError):
            todo.append(getattr(current, "cause", None))
        todo += [current.__cause__, current.__context__]


def is_database_failure(exc: BaseException) -> bool:
    from ray_app.store.store import StoreError

    return any(isinstance(e, (psycopg.OperationalError, StoreError)) for e in causes(exc))


def is_replica_failure(exc: BaseException) -> bool:
    """A replica died or could not be reached: the request never ran to its end there, so it may go elsewhere."""
    return any(isinstance(e, REPLICA_FAILURES) for e in causes(exc))


def classify(exc: BaseException, retry_after_s: float) -> Fault | None:
    """The 503 for a failure of the service (overload, replica, timeout, database); None for anything else.

    Prism's own input errors are not faults (the ingress maps them by type); a bug is None too (500).
    The outermost recognised failure decides: an ``Overloaded`` raised while handling the admission
    gate's own wait timeout is "overloaded", not "timeout".
    """
    from ray_app.store.store import StoreError

    for e in causes(exc):
        if isinstance(e, BackPressureError):
            return Fault(503, "overloaded", "the service is at capacity; try again", retry_after_s)
        if isinstance(e, REPLICA_FAILURES + (ReplicaFailed,)):
            return Fault(503, "replica_unavailable", "a replica failed under this request; try again", retry_after_s)
        if isinstance(e, (StageTimeout, TimeoutError)):
            return Fault(503, "timeout", "a stage of the service did not answer in time; try again", retry_after_s)
        if isinstance(e, (psycopg.OperationalError, StoreError)):
            return Fault(503, "database_unavailable", "the database cannot be reached; try again", retry_after_s)
        if isinstance(e, Unavailable):
            return Fault(503, e.code, str(e).splitlines()[0] if str(e) else e.code,
                         getattr(e, "retry_after_s", retry_after_s))
    return None


def error_code(exc: BaseException) -> str:
    """The ``code`` of an in-band error event (a stream that has started cannot change its status)."""
    fault = classify(exc, 0)
    if fault is not None:
        return fault.code
    return exc.code if isinstance(exc, PrismError) else "internal_error"


async def call(make: Callable[[], object], timeout_s: float, what: str) -> object:
    """Await one handle call (``make()`` returns a ``DeploymentResponse``) within ``timeout_s``; a call whose
    replica failed is made once more (the router sends it to another replica when there is one).

    Raises:
        StageTimeout: no answer in time (the request is cancelled).
        ReplicaFailed: the replica failed twice.
    """
    for attempt in (1, 2):
        response = make()
        try:
            return await asyncio.wait_for(_awaited(response), timeout_s)
        except TimeoutError:
            response.cancel()
            raise StageTimeout(f"{what} did not answer within {timeout_s:g} s") from None
        except Exception as exc:
            if not is_replica_failure(exc) or is_database_failure(exc):
                raise
            if attempt == 2:
                raise ReplicaFailed(f"{what}: a replica failed twice ({type(exc).__name__})") from exc
            log.warning("%s: a replica failed (%s); retrying once", what, type(exc).__name__)
    raise AssertionError("unreachable")


async def _awaited(response):
    return await response


async def stream(make: Callable[[], object], timeout_s: float, what: str) -> AsyncIterator:
    """The pieces of a streaming handle call, each within ``timeout_s``; when the replica fails before the
    first piece the call is made once more (nothing has been sent yet), after it the failure is raised.

    Raises:
        StageTimeout: a piece did not come in time.
        ReplicaFailed: the replica failed before the first piece, twice.
    """
    for attempt in (1, 2):
        response = make()
        started = finished = False
        try:
            while True:
                try:
                    piece = await asyncio.wait_for(anext(response), timeout_s)
                except StopAsyncIteration:
                    finished = True
                    return
                started = True
                yield piece
        except TimeoutError:
            response.cancel()
            raise StageTimeout(f"{what} sent nothing for {timeout_s:g} s") from None
        except Exception as exc:
            if started or not is_replica_failure(exc):
                raise
            if attempt == 2:
                raise ReplicaFailed(f"{what}: a replica failed twice before the first piece") from exc
            log.warning("%s: a replica failed before the first piece (%s); retrying once", what, type(exc).__name__)
        finally:
            if not finished:  # a failure, a timeout or a consumer that went away: free the replica's slot
                response.cancel()
