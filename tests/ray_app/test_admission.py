"""Admission control: a bounded set of places, a short bounded wait, refusal at once when full."""

import asyncio
import time

import pytest

from ray_app.ask.admission import AdmissionGate, Overloaded


def test_places_wait_and_refusal():
    async def scenario():
        gate = AdmissionGate(max_active=2, max_waiting=1, wait_s=5, retry_after_s=3)
        release = asyncio.Event()
        entered = []

        async def hold(name):
            async with gate.place():
                entered.append(name)
                await release.wait()

        holders = [asyncio.create_task(hold(n)) for n in ("a", "b")]
        await asyncio.sleep(0.05)
        waiter = asyncio.create_task(hold("c"))  # waits for a place
        await asyncio.sleep(0.05)
        assert gate.stats()["active"] == 2 and gate.stats()["waiting"] == 1
        started = time.perf_counter()
        with pytest.raises(Overloaded) as refused:
            async with gate.place():
                pass
        assert time.perf_counter() - started < 0.1  # refused at once, not after a wait
        assert refused.value.retry_after_s == 3 and refused.value.code == "overloaded"
        release.set()
        await asyncio.gather(*holders, waiter)
        assert sorted(entered) == ["a", "b", "c"]
        return gate.stats()

    stats = asyncio.run(scenario())
    assert stats["active"] == 0 and stats["waiting"] == 0 and stats["refused"] == 1


def test_a_wait_longer_than_wait_s_is_refused():
    async def scenario():
        gate = AdmissionGate(max_active=1, max_waiting=4, wait_s=0.1, retry_after_s=1)
        async with gate.place():
            with pytest.raises(Overloaded):
                async with gate.place():
                    pass
        async with gate.place():  # free again
            pass
        return gate.stats()

    assert asyncio.run(scenario())["refused"] == 1


def test_a_place_is_freed_when_the_holder_is_cancelled():
    async def scenario():
        gate = AdmissionGate(max_active=1, max_waiting=0, wait_s=0, retry_after_s=1)

        async def hold():
            async with gate.place():
                await asyncio.sleep(60)

        task = asyncio.create_task(hold())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return gate.stats()

    assert asyncio.run(scenario())["active"] == 0


def test_the_limit_follows_the_time_to_first_token():
    """Late first tokens cut the limit (at most once per target interval), prompt ones raise it back."""
    async def scenario():
        gate = AdmissionGate(max_active=4, max_waiting=0, wait_s=0, retry_after_s=1, ttft_target_s=0.05)
        gate.observe(0.2)  # later than the target: 4 -> 2.8, two places
        assert gate.stats()["limit"] == 2.8
        gate.observe(0.2)  # within the same interval: no second cut for asks admitted under the old limit
        assert gate.stats()["limit"] == 2.8
        async with gate.place():
            async with gate.place() as second:
                with pytest.raises(Overloaded):  # a third is refused
                    async with gate.place():
                        pass
                second.started()  # prompt, with the limit full: one more place, probed additively
                second.started()  # reported once
                assert gate.stats()["limit"] == pytest.approx(2.8 + 1 / 2.8, abs=0.01)
                async with gate.place():  # the third place is open now
                    pass
        await asyncio.sleep(0.06)
        for _ in range(20):
            gate.observe(1.0)
            await asyncio.sleep(0.051)
        assert gate.stats()["limit"] == 1.0  # never below one place
        gate.observe(0.0)  # the limit did not hold anyone back (nothing active): unchanged
        return gate.stats()

    assert asyncio.run(scenario())["limit"] == 1.0


def test_a_waiting_ask_takes_a_place_the_limit_opens():
    """When a prompt first token raises the limit by a whole place, a waiting ask starts at once, not when some
    other ask finishes."""
    async def run():
        gate = AdmissionGate(max_active=2, max_waiting=1, wait_s=5, retry_after_s=1, ttft_target_s=0.5)
        gate.observe(1.0)  # late: 2 -> 1.4, one place
        release, entered = asyncio.Event(), []
        holder_in = asyncio.Event()

        async def hold(name, place_started: bool):
            async with gate.place() as place:
                entered.append(name)
                holder_in.set()
                if place_started:
                    await asyncio.sleep(0.05)
                    place.started()  # its first token, within the target, with the limit full: 1.4 -> 2
                await release.wait()

        first = asyncio.create_task(hold("a", True))
        await holder_in.wait()
        waiter = asyncio.create_task(hold("b", False))
        await asyncio.sleep(0.01)
        assert entered == ["a"] and gate.stats()["waiting"] == 1
        await asyncio.sleep(0.1)  # "a" reports its first token; nobody releases a place
        assert entered == ["a", "b"] and gate.stats()["limit"] == 2.0  # 1.4 + 1/1.4, capped at max_active
        release.set()
        await asyncio.gather(first, waiter)
        return gate.stats()

    stats = asyncio.run(run())
    assert stats["active"] == 0 and stats["waiting"] == 0 and stats["refused"] == 0


def test_without_a_target_the_limit_stays_at_max_active():
    gate = AdmissionGate(max_active=3, max_waiting=0, wait_s=0, retry_after_s=1)
    gate.observe(100.0)
    assert gate.stats()["limit"] == 3.0
