"""Importing the feature package keeps prometheus_client in single-process mode (feast would switch it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def test_importing_features_leaves_prometheus_in_process_and_the_environment_clean():
    code = (
        "import os, features, prometheus_client.values as v; "
        "print(v.ValueClass is v.MutexValue, 'PROMETHEUS_MULTIPROC_DIR' in os.environ)"
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PROMETHEUS_MULTIPROC")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["True", "False"]


def test_feast_alone_would_switch_it():  # the reason for the guard; fails when feast stops doing it
    code = "import os, feast, prometheus_client.values as v; print(v.ValueClass is v.MutexValue)"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PROMETHEUS_MULTIPROC")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["False"]
