"""The one retry policy: exponential backoff with jitter, built on tenacity.

Every loop that waits out a transient failure (a broker electing a leader, a store or server that is down, a webhook
answering 5xx) uses :func:`policy` (plain code) or :func:`async_policy` (coroutines), so backoff, jitter, limits and
the log line are the same everywhere. Usage::

    for attempt in policy(retry_on=KafkaException, deadline_s=10, what="list offsets"):
        with attempt:
            low, high = consumer.get_watermark_offsets(partition)

    value = policy(retry_on=is_transient, attempts=4)(send, body)

When the retries are spent, the last exception is raised as itself (``reraise``), never wrapped. A loop that reports
its own retries (a metric, a liveness beat, a log line others look for) passes ``on_retry(attempt, delay_s, error)``,
called before each wait in place of the default log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict, Unpack

import tenacity

log = logging.getLogger(__name__)

RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
OnRetry = Callable[[int, float, BaseException], None]


class Limits(TypedDict, total=False):
    """When to stop and how long to wait, shared by :func:`policy` and :func:`async_policy`.

    ``attempts`` tries, ``deadline_s`` seconds, or until ``stop_when()`` is true (none given: retry forever); waits of
    ``initial_s * 2**n`` plus up to ``initial_s`` of jitter, at most ``max_s``; ``what`` names the call in the log
    line, which ``on_retry(attempt, delay_s, error)`` replaces when given.
    """

    attempts: int | None
    deadline_s: float | None
    initial_s: float
    max_s: float
    what: str
    stop_when: Callable[[], bool] | None
    on_retry: OnRetry | None


def _arguments(
    retry_on: RetryOn,
    attempts: int | None = None,
    deadline_s: float | None = None,
    initial_s: float = 0.2,
    max_s: float = 10.0,
    what: str = "call",
    stop_when: Callable[[], bool] | None = None,
    on_retry: OnRetry | None = None,
) -> dict[str, Any]:
    if isinstance(retry_on, type | tuple):
        retry = tenacity.retry_if_exception_type(retry_on)
    else:
        retry = tenacity.retry_if_exception(retry_on)
    stops = []
    if attempts is not None:
        stops.append(tenacity.stop_after_attempt(attempts))
    if deadline_s is not None:
        stops.append(tenacity.stop_after_delay(deadline_s))
    if stop_when is not None:
        stops.append(lambda _state: stop_when())
    stop = tenacity.stop_any(*stops) if stops else tenacity.stop_never

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if on_retry is not None and error is not None:  # retries follow exceptions only: error is always set
            on_retry(state.attempt_number, state.upcoming_sleep, error)
            return
        log.log(
            logging.WARNING if state.attempt_number >= 3 else logging.DEBUG,
            "%s failed (attempt %d), retrying in %.2fs: %s",
            what,
            state.attempt_number,
            state.upcoming_sleep,
            error,
        )

    return {
        "retry": retry,
        "stop": stop,
        "wait": tenacity.wait_exponential_jitter(initial=initial_s, max=max_s, jitter=initial_s),
        "reraise": True,
        "before_sleep": before_sleep,
    }


def policy(
    *, retry_on: RetryOn, sleep: Callable[[float], object] = time.sleep, **limits: Unpack[Limits]
) -> tenacity.Retrying:
    """A retrying context for plain code: retry what ``retry_on`` matches (exception types or a predicate) within
    ``limits`` (:class:`Limits`). ``sleep`` is replaceable (a test's recorder, or ``threading.Event.wait`` to cut a
    wait short on shutdown)."""
    return tenacity.Retrying(sleep=sleep, **_arguments(retry_on, **limits))


def async_policy(
    *, retry_on: RetryOn, sleep: Callable[[float], Awaitable[Any]] | None = None, **limits: Unpack[Limits]
) -> tenacity.AsyncRetrying:
    """:func:`policy` for coroutines: ``async for attempt in async_policy(...): with attempt: await ...``.

    ``sleep`` (default ``asyncio.sleep``) is awaited between attempts: one that returns early on shutdown cuts the
    wait short."""
    arguments = _arguments(retry_on, **limits)
    if sleep is not None:
        arguments["sleep"] = sleep
    return tenacity.AsyncRetrying(**arguments)
