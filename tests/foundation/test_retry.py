"""The one retry policy: what it retries, how long it waits, when it stops, what it raises and reports."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from foundation.retry import async_policy, policy

pytestmark = pytest.mark.unit


class Flaky:
    """Raises ``errors`` in turn, then returns ``"done"``; counts its calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_matching_errors_are_retried_until_the_call_succeeds():
    call, sleeps = Flaky(ConnectionError("a"), TimeoutError("b")), Sleeps()
    assert policy(retry_on=(ConnectionError, TimeoutError), sleep=sleeps)(call) == "done"
    assert call.calls == 3 and len(sleeps) == 2


def test_an_error_that_does_not_match_is_raised_at_once():
    call, sleeps = Flaky(ValueError("bad input")), Sleeps()
    with pytest.raises(ValueError, match="bad input"):
        policy(retry_on=ConnectionError, sleep=sleeps)(call)
    assert call.calls == 1 and sleeps == []


def test_a_predicate_chooses_what_is_retried():
    def transient(exc: BaseException) -> bool:
        return isinstance(exc, OSError) and exc.errno == 11

    call = Flaky(OSError(11, "again"), OSError(2, "missing"))
    with pytest.raises(OSError, match="missing"):
        policy(retry_on=transient, sleep=Sleeps())(call)
    assert call.calls == 2


def test_spent_attempts_raise_the_last_error_itself():
    call = Flaky(*[ConnectionError(f"try {i}") for i in range(5)])
    with pytest.raises(ConnectionError, match="try 2"):  # not tenacity's RetryError
        policy(retry_on=ConnectionError, attempts=3, sleep=Sleeps())(call)
    assert call.calls == 3


def test_waits_grow_exponentially_with_bounded_jitter_up_to_the_cap():
    sleeps = Sleeps()
    with pytest.raises(ConnectionError):
        policy(retry_on=ConnectionError, attempts=7, initial_s=0.1, max_s=1.0, sleep=sleeps)(
            Flaky(*[ConnectionError()] * 7)
        )
    assert len(sleeps) == 6
    for n, seconds in enumerate(sleeps):
        low = min(1.0, 0.1 * 2**n)
        assert low <= seconds <= min(1.0, low + 0.1), (n, seconds)
    assert sleeps[-1] == 1.0


def test_a_deadline_stops_the_retries():
    call = Flaky(*[ConnectionError()] * 1000)
    with pytest.raises(ConnectionError):
        policy(retry_on=ConnectionError, deadline_s=0.3, initial_s=0.05, max_s=0.05)(call)
    assert 2 <= call.calls < 20


def test_stop_when_ends_a_policy_without_limits():
    stopping = threading.Event()
    call = Flaky(*[ConnectionError()] * 1000)

    def sleep(_seconds: float) -> None:
        if call.calls == 4:
            stopping.set()

    with pytest.raises(ConnectionError):
        policy(retry_on=ConnectionError, stop_when=stopping.is_set, sleep=sleep)(call)
    assert call.calls == 5  # the attempt after the wait that saw the stop is the last


def test_the_context_form_retries_the_block():
    call, sleeps = Flaky(ConnectionError()), Sleeps()
    for attempt in policy(retry_on=ConnectionError, sleep=sleeps):
        with attempt:
            result = call()
    assert result == "done" and call.calls == 2 and len(sleeps) == 1


def test_retries_are_logged_by_default_and_louder_from_the_third(caplog):
    with caplog.at_level(logging.DEBUG, logger="foundation.retry"):
        policy(retry_on=ConnectionError, what="list offsets", sleep=Sleeps())(Flaky(*[ConnectionError("down")] * 3))
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "foundation.retry"]
    assert [level for level, _ in lines] == [logging.DEBUG, logging.DEBUG, logging.WARNING]
    assert lines[0][1].startswith("list offsets failed (attempt 1), retrying in") and lines[0][1].endswith(": down")


def test_on_retry_replaces_the_log_line(caplog):
    reported: list[tuple] = []
    with caplog.at_level(logging.DEBUG, logger="foundation.retry"):
        retrying = policy(retry_on=OSError, initial_s=0.5, sleep=Sleeps(), on_retry=lambda *a: reported.append(a))
        retrying(Flaky(ConnectionError("x"), ConnectionError("y")))
    assert [(attempt, str(error)) for attempt, _delay, error in reported] == [(1, "x"), (2, "y")]
    assert 0.5 <= reported[0][1] <= 1.0
    assert not [r for r in caplog.records if r.name == "foundation.retry"]


def test_the_async_policy_retries_coroutines_with_its_own_sleep():
    waits = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def run() -> str:
        call = Flaky(ConnectionError(), ConnectionError())
        async for attempt in async_policy(retry_on=ConnectionError, sleep=sleep):
            with attempt:
                await asyncio.sleep(0)
                result = call()
        return result

    assert asyncio.run(run()) == "done"
    assert len(waits) == 2


def test_the_async_policy_raises_the_last_error_when_spent():
    async def failing() -> None:
        raise TimeoutError("slow")

    async def run() -> None:
        await async_policy(retry_on=TimeoutError, attempts=2, initial_s=0.01)(failing)

    with pytest.raises(TimeoutError, match="slow"):
        asyncio.run(run())
