"""``driftloop tail`` against a real broker with garbage on every topic: one line per record, never a traceback."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import click
import pytest
from click.testing import CliRunner

from driftloop.commands.context import CommandContext
from driftloop.commands.streams import TAILABLE, tail_command
from streams import KafkaProducer, Record, ensure_topics
from streams.schemas import Label

pytestmark = pytest.mark.integration

HOSTILE = [
    b"\xff\xfe\x00binary",
    b"not json",
    b"[1, 2]",
    b'{"a": NaN}',
    b"{" * 5000,
    b"x" * 200_000,
    None,
    json.dumps({"event_id": "e", "label": "positive", "labelled_at": "0001-01-01T00:00:00+01:00"}).encode(),
    b'{"multi":\n "line"}',
]


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """``tail`` as ``driftloop`` registers it."""
    ctx.obj = CommandContext(None, None, None)


cli.add_command(tail_command)


@pytest.fixture
def garbage_everywhere(settings_factory, monkeypatch):
    """Every tailable topic holds the hostile records, then one valid label on the labels topic."""
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "DRIFTLOOP_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    settings = settings_factory()
    ensure_topics(settings)
    records = [
        Record(settings.kafka.topic(topic), value, key=f"k-{uuid.uuid4().hex[:6]}".encode())
        for topic in TAILABLE.values()
        for value in HOSTILE
    ]
    label = Label(event_id="ev-1", label="positive", labelled_at=datetime.now(UTC))
    records.append(Record(settings.kafka.topic("labels-v1"), label.to_bytes(), key=b"ev-1"))
    with KafkaProducer(settings) as producer:
        producer.produce_batch(records)
    env = {
        "DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
        "DRIFTLOOP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "DRIFTLOOP_KAFKA__SESSION_TIMEOUT_MS": "6000",
    }
    return settings, env


@pytest.mark.parametrize("stream", sorted(TAILABLE))
def test_tail_prints_every_hostile_record_as_a_note(garbage_everywhere, stream):
    _, env = garbage_everywhere
    count = len(HOSTILE) + (stream == "labels")
    result = CliRunner().invoke(cli, ["tail", stream, "--from-beginning", "--max", str(count)], env=env)
    assert result.exit_code == 0 and result.exception is None, result.output[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == count and "Traceback" not in result.output
    notes = [line for line in lines if line.startswith("! ")]
    assert len(notes) == len(HOSTILE) and all(f"invalid {stream} record:" in n for n in notes)
    assert any("base64:" in n for n in notes) and any("(tombstone)" in n for n in notes)
    assert all(len(line) < 2000 for line in lines)
    if stream == "labels":
        (valid,) = [line for line in lines if not line.startswith("! ")]
        assert json.loads(valid)["event_id"] == "ev-1"


def test_tail_json_keeps_stdout_json_and_notes_the_rest_on_stderr(garbage_everywhere):
    _, env = garbage_everywhere
    count = len(HOSTILE) + 1
    result = CliRunner().invoke(cli, ["tail", "labels", "--json", "--from-beginning", "--max", str(count)], env=env)
    assert result.exit_code == 0 and result.exception is None, result.output[-2000:]
    printed = [json.loads(line) for line in result.stdout.splitlines()]  # every stdout line is JSON
    # Valid JSON prints as it is, whatever the contract says (a list, a year-one label); several lines become one.
    expected = [[1, 2], json.loads(HOSTILE[7]), {"multi": "line"}]
    rest = [p for p in printed if not (isinstance(p, dict) and p.get("event_id") == "ev-1")]
    assert len(printed) - len(rest) == 1  # the valid label
    assert sorted(map(json.dumps, rest)) == sorted(map(json.dumps, expected))
    notes = result.stderr.splitlines()
    assert len(notes) == count - len(printed) and all(n.startswith("! ") for n in notes)
    assert any("not UTF-8" in n and "base64:" in n for n in notes) and any("tombstone" in n for n in notes)
