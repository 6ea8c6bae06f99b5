"""Admission control: an ask starts only when the LLM can take it soon; otherwise it is refused at once.

An :class:`AdmissionGate` bounds the asks in flight (``max_active``, what the fusion replicas decode
together) and the asks waiting for one of those places (``max_waiting``, at most ``wait_s`` each).
The decision comes before any vision or retrieval work is spent: a full gate raises
:class:`Overloaded`, which a transport answers with 503 and ``Retry-After`` (Envoy's overload
manager: shed early, say when to come back).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ray_app.errors import Unavailable


class Overloaded(Unavailable):
    """Too many asks in flight; come back after ``retry_after_s`` seconds."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AdmissionGate:
    """A bounded set of places for asks in one process, with a short bounded wait.

    Args:
        max_active: asks that may run at once.
        max_waiting: asks that may wait for a place; more are refused at once.
        wait_s: how long a waiting ask waits before it is refused.
        retry_after_s: what a refused ask is told about coming back.
    """

    def __init__(self, max_active: int, max_waiting: int, wait_s: float, retry_after_s: float):
        if max_active < 1 or max_waiting < 0:
            raise ValueError(f"need max_active >= 1 and max_waiting >= 0, got {max_active}, {max_waiting}")
        self.max_active, self.max_waiting = max_active, max_waiting
        self.wait_s, self.retry_after_s = wait_s, retry_after_s
        self.active = 0
        self.waiting = 0
        self.refused = 0
        self._freed = asyncio.Condition()

    def stats(self) -> dict:
        return {"active": self.active, "waiting": self.waiting, "refused": self.refused,
                "max_active": self.max_active, "max_waiting": self.max_waiting}

    @asynccontextmanager
    async def place(self) -> AsyncIterator[None]:
        """Hold a place for the duration of the block.

        Raises:
            Overloaded: every place is taken and the wait is full or took longer than ``wait_s``.
        """
        await self._acquire()
        try:
            yield
        finally:
            async with self._freed:
                self.active -= 1
                self._freed.notify()

    async def _acquire(self) -> None:
        if self.active < self.max_active and self.waiting == 0:
            self.active += 1
            return
        if self.waiting >= self.max_waiting:
            self._refuse()
        self.waiting += 1
        try:
            async with self._freed:
                await asyncio.wait_for(self._freed.wait_for(lambda: self.active < self.max_active), self.wait_s)
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
