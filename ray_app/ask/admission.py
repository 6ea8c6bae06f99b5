"""Admission control: an ask starts only when the LLM can take it soon; otherwise it is refused at once.

An :class:`AdmissionGate` bounds the asks in flight (``max_active``, what the fusion replicas decode
together) and the asks waiting for one of those places (``max_waiting``, at most ``wait_s`` each).
The decision comes before any vision or retrieval work is spent: a full gate raises
:class:`Overloaded`, which a transport answers with 503 and ``Retry-After`` (Envoy's overload
manager: shed early, say when to come back).

How many asks may run at once is not fixed: the gate measures each admitted ask's time to its first
token (from its arrival, waits included) and keeps a ``limit`` between 1 and ``max_active`` by
additive increase and multiplicative decrease against ``ttft_target_s`` (TCP's congestion window;
Netflix's concurrency-limits do the same for services). When the CPU is shared with more work (search
traffic, a second ingress replica with its own gate, the load generator) the gate lets fewer asks in,
down to one; what that one waits for beyond it is CPU the gate does not control
(docs/reports/serve-capacity.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ray_app.errors import Unavailable


class Overloaded(Unavailable):
    """Too many asks in flight; come back after ``retry_after_s`` seconds."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Place:
    """One admitted ask; :meth:`started` reports its first token to the gate (once)."""

    def __init__(self, gate: AdmissionGate, arrived: float):
        self._gate, self._arrived, self._reported = gate, arrived, False

    def started(self) -> None:
        if not self._reported:
            self._reported = True
            self._gate.observe(time.perf_counter() - self._arrived)


class AdmissionGate:
    """A bounded set of places for asks in one process, with a short bounded wait.

    Args:
        max_active: most asks that may run at once (the adaptive ``limit`` starts there).
        max_waiting: asks that may wait for a place; more are refused at once.
        wait_s: how long a waiting ask waits before it is refused.
        retry_after_s: what a refused ask is told about coming back.
        ttft_target_s: the time to first token an admitted ask should stay under; None keeps the
            limit at ``max_active``.
    """

    decrease = 0.7  # the limit's cut when an ask started later than the target

    def __init__(self, max_active: int, max_waiting: int, wait_s: float, retry_after_s: float,
                 ttft_target_s: float | None = None):
        if max_active < 1 or max_waiting < 0:
            raise ValueError(f"need max_active >= 1 and max_waiting >= 0, got {max_active}, {max_waiting}")
        if ttft_target_s is not None and ttft_target_s <= 0:
            raise ValueError(f"ttft_target_s must be > 0, got {ttft_target_s}")
        self.max_active, self.max_waiting = max_active, max_waiting
        self.wait_s, self.retry_after_s, self.ttft_target_s = wait_s, retry_after_s, ttft_target_s
        self.limit = float(max_active)
        self.active = 0
        self.waiting = 0
        self.refused = 0
        self._last_cut = 0.0
        self._freed = asyncio.Condition()
        self._wakers: set[asyncio.Task] = set()

    def stats(self) -> dict:
        return {"active": self.active, "waiting": self.waiting, "refused": self.refused,
                "limit": round(self.limit, 2), "max_active": self.max_active, "max_waiting": self.max_waiting,
                "ttft_target_s": self.ttft_target_s}

    def _open(self) -> bool:
        return self.active < int(self.limit)

    def observe(self, ttft_s: float) -> None:
        """Adapt the limit to one admitted ask's time to first token (arrival to first token)."""
        if self.ttft_target_s is None:
            return
        now = time.perf_counter()
        if ttft_s > self.ttft_target_s:
            # one cut per target interval: the asks already running started under the old limit
            if now - self._last_cut >= self.ttft_target_s:
                self.limit = max(1.0, self.limit * self.decrease)
                self._last_cut = now
        elif self.active >= int(self.limit):  # the limit was what held asks back: probe one more place
            places = int(self.limit)
            self.limit = min(float(self.max_active), self.limit + 1.0 / self.limit)
            if int(self.limit) > places and self.waiting:
                self._wake_waiters()

    def _wake_waiters(self) -> None:
        """A place opened without one being freed (the limit grew): a waiting ask takes it now, not at the next
        release. ``observe`` is synchronous (called at a first token), so the notification is a task on the loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop here: nobody can be waiting on this gate's condition
            return

        async def notify() -> None:
            async with self._freed:
                self._freed.notify(max(1, int(self.limit) - self.active))

        task = loop.create_task(notify())
        self._wakers.add(task)  # a reference until it ran (the loop keeps only weak ones)
        task.add_done_callback(self._wakers.discard)

    @asynccontextmanager
    async def place(self) -> AsyncIterator[Place]:
        """Hold a place for the duration of the block; the block calls ``started()`` at the first token.

        Raises:
            Overloaded: every place is taken and the wait is full or took longer than ``wait_s``.
        """
        arrived = time.perf_counter()
        await self._acquire()
        try:
            yield Place(self, arrived)
        finally:
            async with self._freed:
                self.active -= 1
                self._freed.notify()

    async def _acquire(self) -> None:
        if self._open() and self.waiting == 0:
            self.active += 1
            return
        if self.waiting >= self.max_waiting:
            self._refuse()
        self.waiting += 1
        try:
            async with self._freed:
                await asyncio.wait_for(self._freed.wait_for(self._open), self.wait_s)
                self.active += 1
                return
        except TimeoutError:
            pass  # refused below, outside the handler: the refusal must not carry the wait's TimeoutError
        finally:
            self.waiting -= 1
        self._refuse()

    def _refuse(self) -> None:
        self.refused += 1
        raise Overloaded(f"{self.active} answers in progress and {self.waiting} waiting: the service is at capacity",
                         self.retry_after_s)
