"""The monitoring package's public names are exported, sorted, and importable."""

from __future__ import annotations

import pytest

import monitoring

pytestmark = pytest.mark.unit


def test_all_is_sorted_and_importable():
    assert monitoring.__all__ == sorted(monitoring.__all__)
    for name in monitoring.__all__:
        assert hasattr(monitoring, name), name
