"""The local Kafka broker: KRaft single node, run from the broker jars on Maven Central (or ``KAFKA_HOME``)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import uuid
from base64 import urlsafe_b64encode
from pathlib import Path

from confluent_kafka.admin import AdminClient

from driftloop.settings import Settings
from driftloop.stack.exceptions import ComponentNotFound, StackError
from driftloop.stack.process import ServerProcess
from driftloop.stack.repo import DEPLOY_DIR
from streams.client import client_config
from streams.topics import ensure_topics

log = logging.getLogger(__name__)

KAFKA_DEPLOY = DEPLOY_DIR / "local" / "kafka"
_COMPLETE = ".complete"


def server(settings: Settings) -> ServerProcess:
    return ServerProcess("kafka", settings.stack.run_dir / "kafka")


def classpath(settings: Settings) -> str:
    """The broker's class path: ``$KAFKA_HOME/libs`` when set, else the jars Maven resolved into the cache.

    Raises:
        ComponentNotFound: no KAFKA_HOME and Maven is missing or failed.
    """
    if settings.stack.kafka_home:
        libs = settings.stack.kafka_home / "libs"
        if not any(libs.glob("kafka_*.jar")):
            raise ComponentNotFound(f"KAFKA_HOME={settings.stack.kafka_home} has no libs/kafka_*.jar")
        return f"{libs}/*"
    return f"{resolve_jars(settings)}/*"


def resolve_jars(settings: Settings) -> Path:
    """Resolve the broker jars once into ``<cache_dir>/kafka-<version>/libs``; later calls reuse the folder."""
    libs = settings.stack.cache_dir / f"kafka-{settings.stack.kafka_version}" / "libs"
    if (libs / _COMPLETE).exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ComponentNotFound("Maven (`mvn`) is needed once to fetch the Kafka broker jars: apt-get install maven")
    staging = libs.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    argv = [
        mvn, "-B", "-q", "-f", str(KAFKA_DEPLOY / "pom.xml"),
        f"-Dkafka.version={settings.stack.kafka_version}",
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
    ]  # fmt: skip
    log.info("resolving Kafka %s broker jars with Maven (once)", settings.stack.kafka_version)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0 or not any(staging.glob("kafka_*.jar")):
        raise StackError(f"Maven could not resolve the Kafka broker jars:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    (staging / _COMPLETE).touch()
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    if candidate and candidate.exists():
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise ComponentNotFound("Java 17+ is needed for the Kafka broker: apt-get install openjdk-17-jre-headless")
    return found


def write_config(settings: Settings) -> Path:
    """Write server.properties and log4j2.xml into the run folder; returns the properties file."""
    proc = server(settings)
    data_dir = (proc.run_dir / "data").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = settings.stack
    properties = (KAFKA_DEPLOY / "server.properties").read_text().format(
        host=stack.host, port=stack.kafka_port, controller_port=stack.kafka_controller_port, data_dir=data_dir
    )
    target = proc.run_dir / "server.properties"
    target.write_text(properties)
    shutil.copyfile(KAFKA_DEPLOY / "log4j2.xml", proc.run_dir / "log4j2.xml")
    return target


def _java_argv(settings: Settings, main_class: str, *args: str) -> list[str]:
    run_dir = server(settings).run_dir.resolve()
    heap = settings.stack.kafka_heap
    return [
        java(), f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={run_dir / 'log4j2.xml'}",
        "-cp", classpath(settings), main_class, *args,
    ]  # fmt: skip


def format_storage(settings: Settings, properties: Path) -> bool:
    """Format the KRaft storage once (a fresh cluster id); False when it was formatted before."""
    data_dir = server(settings).run_dir / "data"
    if (data_dir / "meta.properties").exists():
        return False
    cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    argv = _java_argv(settings, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(properties.resolve()))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise StackError(f"formatting Kafka storage failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return True


def start(settings: Settings) -> int:
    """Start the broker (formatting storage on first start); returns its PID. Does not wait."""
    properties = write_config(settings)
    format_storage(settings, properties)
    return server(settings).start(_java_argv(settings, "kafka.Kafka", str(properties.resolve())))


def is_ready(settings: Settings, timeout_s: float = 2.0) -> bool:
    """True when the broker answers a metadata request with at least one broker."""
    # log_level 0: "connection refused" while the broker starts is expected, not worth a line per retry.
    admin = AdminClient(client_config(settings, {"socket.connection.setup.timeout.ms": 1000, "log_level": 0}))
    return len(admin.list_topics(timeout=timeout_s).brokers) > 0


def up(settings: Settings) -> dict[str, str]:
    """Start the broker unless it runs, wait until ready, create the topics. Returns topic -> created/exists."""
    proc = server(settings)
    if proc.pid() is None:
        start(settings)
    proc.wait_ready(lambda: is_ready(settings), settings.stack.ready_timeout_s, f"broker {settings.kafka_bootstrap}")
    return ensure_topics(settings)


def describe(settings: Settings, timeout_s: float = 3.0) -> str:
    """One line on the broker's health: brokers and topics seen. Raises on failure."""
    admin = AdminClient(client_config(settings, {"log_level": 0}))
    metadata = admin.list_topics(timeout=timeout_s)
    ours = [t for t in metadata.topics if t.startswith(settings.kafka.topic_prefix)]
    return f"{len(metadata.brokers)} broker(s) at {settings.kafka_bootstrap}, {len(ours)} driftloop topic(s)"
