"""The broker's pinned jars: the lock file for the default Kafka version, its parsing, and hash checking."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from driftloop.stack import kafka, kafka_jars
from driftloop.stack.exceptions import StackError
from foundation.settings import Settings

pytestmark = pytest.mark.unit


def test_the_default_kafka_version_has_a_lock_with_the_broker_and_its_logging() -> None:
    version = Settings().stack.kafka_version
    jars = kafka_jars.read_lock(kafka_jars.lock_path(kafka.KAFKA_DEPLOY, version))
    names = {f"{jar.group}:{jar.artifact}" for jar in jars}
    assert {
        "org.apache.kafka:kafka_2.13",
        "org.apache.kafka:kafka-server",
        "org.apache.logging.log4j:log4j-core",
    } <= names
    assert all(len(jar.sha256) == 64 for jar in jars)
    assert len(names) == len(jars)
    broker = next(jar for jar in jars if jar.artifact == "kafka_2.13")
    assert broker.version == version
    assert broker.url == (
        f"https://repo.maven.apache.org/maven2/org/apache/kafka/kafka_2.13/{version}/kafka_2.13-{version}.jar"
    )


@pytest.fixture
def jar_server():
    """A local HTTP server answering every GET with the same bytes (stands in for Maven Central's file server)."""
    body = b"PK\x03\x04 not really a jar"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", body
    server.shutdown()
    server.server_close()


def test_fetch_keeps_jars_that_match_their_hash_and_drops_everything_when_one_does_not(
    tmp_path, jar_server, monkeypatch
) -> None:
    url, body = jar_server
    monkeypatch.setattr(kafka_jars, "MAVEN_CENTRAL", url)
    good = kafka_jars.Jar("org.example", "good", "1.0", hashlib.sha256(body).hexdigest())
    kafka_jars.fetch([good], tmp_path / "ok")
    assert (tmp_path / "ok" / "good-1.0.jar").read_bytes() == body

    bad = kafka_jars.Jar("org.example", "bad", "1.0", "0" * 64)
    with pytest.raises(StackError, match="does not match the SHA-256"):
        kafka_jars.fetch([good, bad], tmp_path / "broken")
    assert not (tmp_path / "broken").exists()
