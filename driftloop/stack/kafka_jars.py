"""The broker's jars, pinned: ``deploy/local/kafka/jars-<version>.lock`` lists each runtime jar with its SHA-256.

``fetch`` downloads them from Maven Central and checks every hash, so a machine needs no Maven; ``write_lock``
regenerates a lock with Maven (``driftloop stack lock-kafka``) after the POM or the Kafka version changes.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from driftloop.stack.exceptions import ComponentNotFound, StackError

log = logging.getLogger(__name__)

MAVEN_CENTRAL = "https://repo.maven.apache.org/maven2"


@dataclass(frozen=True)
class Jar:
    group: str
    artifact: str
    version: str
    sha256: str

    @property
    def file_name(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    @property
    def url(self) -> str:
        return f"{MAVEN_CENTRAL}/{self.group.replace('.', '/')}/{self.artifact}/{self.version}/{self.file_name}"


def lock_path(deploy_dir: Path, version: str) -> Path:
    return deploy_dir / f"jars-{version}.lock"


def read_lock(path: Path) -> list[Jar]:
    """The jars of a lock file: ``group:artifact:version sha256`` per line, ``#`` comments."""
    jars = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            coordinates, sha256 = line.split()
            jars.append(Jar(*coordinates.split(":"), sha256=sha256.lower()))
    return jars


def fetch(jars: list[Jar], dest: Path) -> None:
    """Download ``jars`` into ``dest`` (created), four at a time, each checked against its SHA-256.

    Raises:
        StackError: a download failed or a jar does not match its hash (nothing is left in ``dest`` then).
    """
    dest.mkdir(parents=True, exist_ok=True)
    log.info("fetching %d Kafka broker jars from Maven Central (once)", len(jars))

    def one(jar: Jar) -> None:
        try:
            with urllib.request.urlopen(jar.url, timeout=120) as response:  # noqa: S310 - Maven Central, https
                body = response.read()
        except OSError as exc:
            raise StackError(f"could not download {jar.url}: {exc}") from exc
        if hashlib.sha256(body).hexdigest() != jar.sha256:
            raise StackError(f"{jar.url} does not match the SHA-256 in the lock file")
        (dest / jar.file_name).write_bytes(body)

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(one, jars))
    except StackError:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def write_lock(pom: Path, version: str, out: Path, work_dir: Path) -> int:
    """Resolve the POM's runtime jars with Maven and write their lock file; returns the number of jars.

    Raises:
        ComponentNotFound: no ``mvn`` on PATH.
        StackError: Maven failed.
    """
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ComponentNotFound("writing a lock needs Maven (`mvn`): apt-get install maven")
    libs = work_dir / "libs"
    shutil.rmtree(work_dir, ignore_errors=True)
    listing = work_dir / "dependencies.txt"
    argv = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom),
        f"-Dkafka.version={version}",
        "-DincludeScope=runtime",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
        "dependency:list",
        f"-DoutputFile={listing}",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise StackError(f"Maven could not resolve the Kafka broker jars:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    lines = []
    for entry in listing.read_text().split():
        parts = entry.split(":")
        if len(parts) < 5:
            continue
        group, artifact, _type, jar_version = parts[:4]
        body = (libs / f"{artifact}-{jar_version}.jar").read_bytes()
        lines.append(f"{group}:{artifact}:{jar_version} {hashlib.sha256(body).hexdigest()}")
    header = (
        f"# The Kafka {version} broker's runtime jars ({pom.name} resolved by Maven), with their SHA-256.\n"
        "# `driftloop stack up` fetches these from Maven Central and checks each hash, so no Maven is needed.\n"
        "# Regenerate after changing the POM or the version: `driftloop stack lock-kafka` (needs mvn).\n"
    )
    out.write_text(header + "\n".join(sorted(lines)) + "\n")
    return len(lines)
