"""The feature worker's consumer hands a record to its stream with one task, and as mode does when it must wait."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from streams.ledger_consumer import EagerDelivery

pytestmark = pytest.mark.unit


def _run(scenario):
    async def main():
        service = EagerDelivery()
        return await scenario(service)

    return asyncio.run(main())


def test_a_delivery_that_does_not_wait_runs_as_the_only_task_and_the_flow_wait_is_closed():
    async def scenario(service):
        queue, flow = asyncio.Queue(), asyncio.Event()
        tasks_before = len(asyncio.all_tasks())
        tasks_during: list[int] = []

        async def deliver():
            tasks_during.append(len(asyncio.all_tasks()))
            queue.put_nowait("record")
            return "delivered"

        flow_stopped = flow.wait()
        result = await service.wait_first(deliver(), flow_stopped)
        return result, queue.get_nowait(), tasks_during[0] - tasks_before, inspect.getcoroutinestate(flow_stopped)

    result, record, extra_tasks, flow_wait = _run(scenario)
    assert result.results == ["delivered"] and not result.stopped
    assert record == "record"
    assert extra_tasks == 1  # the delivery alone; mode's own wait_first runs four
    assert flow_wait == inspect.CORO_CLOSED  # closed, not left for Python to warn about


def test_a_delivery_that_waits_is_cut_short_when_the_flow_stops_as_in_mode():
    async def scenario(service):
        full, flow = asyncio.Queue(maxsize=1), asyncio.Event()
        full.put_nowait("old")
        delivered = []

        async def deliver():
            await full.put("new")  # waits: the buffer is full
            delivered.append("new")

        waiting = asyncio.ensure_future(service.wait_first(deliver(), flow.wait()))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        flow.set()  # a rebalance stops the flow: the delivery is abandoned
        await waiting
        await asyncio.sleep(0.01)
        return delivered, full.qsize()

    assert _run(scenario) == ([], 1)


def test_a_delivery_that_waits_ends_when_the_buffer_has_room():
    async def scenario(service):
        full, flow = asyncio.Queue(maxsize=1), asyncio.Event()
        full.put_nowait("old")

        async def deliver():
            await full.put("new")
            return "delivered"

        waiting = asyncio.ensure_future(service.wait_first(deliver(), flow.wait()))
        await asyncio.sleep(0.01)
        assert full.get_nowait() == "old"
        result = await waiting
        return result.results, full.get_nowait()

    assert _run(scenario) == (["delivered"], "new")


def test_a_wait_cancelled_before_the_delivery_ends_leaves_nothing_running():
    async def scenario(service):
        full, flow = asyncio.Queue(maxsize=1), asyncio.Event()
        full.put_nowait("old")

        async def deliver():
            await full.put("new")

        flow_stopped = flow.wait()
        waiting = asyncio.ensure_future(service.wait_first(deliver(), flow_stopped))
        await asyncio.sleep(0)  # the wait has started; the delivery has not taken its first step
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0.01)
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        return others, full.qsize(), inspect.getcoroutinestate(flow_stopped)

    assert _run(scenario) == ([], 1, inspect.CORO_CLOSED)


def test_a_delivery_that_fails_raises_its_error():
    async def scenario(service):
        async def deliver():
            raise ValueError("bad record")

        with pytest.raises(ValueError, match="bad record"):
            await service.wait_first(deliver(), asyncio.Event().wait())
        return True

    assert _run(scenario)


def test_other_waits_are_mode_s_own():
    async def scenario(service):
        ready = asyncio.Event()
        ready.set()
        result = await service.wait_first(ready)  # an event, not a pair of coroutines: mode's wait_first
        return result.results

    assert _run(scenario) == [True]
