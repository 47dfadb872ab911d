"""Freezing a worker's startup heap: what is alive is frozen, what comes later is still collected."""

from __future__ import annotations

import gc
import weakref

import pytest

from foundation.heap import freeze_startup_heap

pytestmark = pytest.mark.unit


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()  # give the test process its heap back


def test_objects_alive_are_frozen_and_later_garbage_is_collected(unfrozen) -> None:
    kept = _Node()
    garbage = _Node()
    gone = weakref.ref(garbage)
    del garbage  # unreachable before the freeze: collected by it, not frozen

    frozen = freeze_startup_heap()

    assert gone() is None
    assert frozen == gc.get_freeze_count() > 0
    assert all(obj is not kept for obj in gc.get_objects())  # frozen objects are outside every generation
    later = _Node()
    later_ref = weakref.ref(later)
    del later
    gc.collect()
    assert later_ref() is None
