"""Live fuzz: thousands of hostile records on every topic the workers read, then the closed loop must still heal.

The scenario runs the e2e closed loop (tests/e2e/test_closed_loop.py: the stream workers under ``driftloop workers``,
``driftloop monitor`` and ``driftloop retrain`` as real processes, the tiny encoder) with a hostile backlog already
waiting on the events, labels, predictions, drift and models topics when the workers start: records generated from
the shapes of tests/chaos/fuzz_corpus.py by a seeded RNG, plus its fixed list (out-of-range, naive and year-1 dates,
dates beyond pandas' nanosecond range, huge and empty values, unknown labels, labels for unknown events and unknown
labels for known ones, garbage on the models and drift topics).

It asserts the invariant of issue 11 ("poison never stops the line"):

- no worker restarted: the demo's supervisor restarted none of its three processes, ``driftloop workers`` started
  each of its two workers once and reported no exit, and no faust agent crashed (its supervisor restarts an agent
  in-process: "Crashed reason=" / "Restarting dead");
- every record on the events topic accounted: one prediction per valid event (deduplicated by ``event_id``), one
  dead letter per refused record, none lost, none duplicated, none wrong (tests/chaos/accounting.py);
- afterwards the loop's own outcome, as in the e2e test: a real drift alerts, a retrained version is promoted, and
  accuracy recovers.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from driftloop.demo import DemoPlan, run_loop
from foundation.settings import Settings
from streams.client import client_config
from streams.schemas import InvalidEvent, check_record_of, parse_event
from tests.chaos import fuzz_corpus
from tests.chaos.accounting import FOREIGN_HEADER, Outputs, account, read_events
from tests.chaos.fuzz_corpus import Hostile
from tests.helpers import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

SEED = 11
#: Generated records per topic (the fixed list comes on top): 2,300 in all.
GENERATED = {"events": 1000, "labels": 400, "predictions": 300, "drift": 300, "models": 300}
TOPIC_NAMES = {
    "events": "events-v1",
    "labels": "labels-v1",
    "predictions": "predictions-v1",
    "drift": "drift-v1",
    "models": "models-v1",
}
WORKERS = ("inference", "features", "monitor", "retrain")


def hostile_corpus(model: str) -> list[Hostile]:
    """The generated records of every topic, then the fixed list (whose unknown labels name some valid events)."""
    records = [r for topic, count in GENERATED.items() for r in fuzz_corpus.generated(topic, count, SEED, model)]
    valid_ids = [event.event_id for event in map(_accepted_event, records) if event is not None]
    return records + fuzz_corpus.fixed(model, known_event_ids=valid_ids[:20])


def _accepted_event(record: Hostile):
    """The event the inference worker predicts, None for one it dead-letters: the contract, then the record rules
    (its timestamp is about now: :func:`inject` backdates it by minutes, and the corpus's dates are years apart)."""
    if record.topic != "events":
        return None
    try:
        event = parse_event(record.value)
        check_record_of(event, record.key, None, Settings().workers.max_event_ahead_s)
    except InvalidEvent:
        return None
    return event


def inject(settings: Settings, records: list[Hostile], backdate_s: float = 600.0) -> Counter[str]:
    """Produce ``records`` onto their topics, each marked with :data:`FOREIGN_HEADER` and stamped ``backdate_s``
    in the past; returns records per topic once the broker acknowledged them all.

    The stamp makes them a backlog that was waiting before the loop began: the demo's observer reads the topics from
    its start time on (by timestamp), so it sees the workers' answers, never the hostile records themselves - a
    valid-shaped prediction of another model would otherwise pass for the workers' first answer. The workers' consumer
    groups read from the earliest offset, so they meet every hostile record.
    """
    config = client_config(
        settings,
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
        },
    )
    producer, failures = Producer(config), []
    stamp = int((time.time() - backdate_s) * 1000)

    def delivered(err, msg) -> None:
        if err is not None:
            failures.append(f"{msg.topic()}: {err}")

    for record in records:
        kwargs = {
            "key": record.key,
            "value": record.value,
            "headers": [(FOREIGN_HEADER, b"live-fuzz")],
            "timestamp": stamp,
            "on_delivery": delivered,
        }
        while True:
            try:
                producer.produce(settings.kafka.topic(TOPIC_NAMES[record.topic]), **kwargs)
                break
            except BufferError:
                producer.poll(0.1)  # the local queue is full: serve delivery reports until there is room
    remaining = producer.flush(120)
    assert not failures and not remaining, f"{remaining} not acknowledged; refused: {failures[:3]}"
    return Counter(r.topic for r in records)


def records_on(settings: Settings, name: str) -> int:
    """How many records the topic holds (a fresh topic: the sum of its partitions' high watermarks)."""
    topic = settings.kafka.topic(name)
    consumer = Consumer(client_config(settings, {"group.id": f"count-{uuid.uuid4().hex[:6]}"}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()


_STARTED = re.compile(r"started (\w+) worker \d+")
_EXITED = re.compile(r"(\w+) worker \d+ exited with")
_AGENT_CRASH = re.compile(r"Crashed reason=|Restarting dead")
_SUPERVISED = re.compile(r">>> (\w+) exited with")


def restarts(logs: Path, echoed: list[str]) -> dict[str, int]:
    """Restarts per worker, from what the supervisors logged: the demo's (``>>> NAME exited with``, echoed) for
    the three processes it runs; ``driftloop workers`` (a second ``started ROLE worker``, or an ``exited with``) for
    the inference and feature workers; faust's agent supervisor (in-process) for the feature worker."""
    demo = Counter(m.group(1) for line in echoed if (m := _SUPERVISED.search(line)))
    text = (logs / "workers.log").read_text(errors="replace") if (logs / "workers.log").exists() else ""
    started = Counter(m.group(1) for m in _STARTED.finditer(text))
    exited = Counter(m.group(1) for m in _EXITED.finditer(text))
    counts = {role: max(started[role] - 1, exited[role], 0) for role in ("inference", "features")}
    counts["features"] += len(_AGENT_CRASH.findall(text))
    counts["monitor"], counts["retrain"] = demo["monitor"], demo["retrain"]
    counts["supervisor"] = demo["workers"]  # `driftloop workers` itself
    return counts


def tracebacks(logs: Path) -> dict[str, int]:
    """Tracebacks per log file (reported, for the record: a worker may log one for an error it survives)."""
    return {p.stem: p.read_text(errors="replace").count("Traceback") for p in sorted(logs.glob("*.log"))}


@pytest.mark.timeout(900)  # start-up of the workers (up to 180 s), the plan's own timeout (300 s), the accounting
def test_hostile_records_on_every_topic_stop_nothing_and_the_loop_still_heals(
    loop_settings,
    tmp_path,
    chaos_ledger,
):
    from training.pipeline import train_version

    settings, config_file = loop_settings
    first = train_version(settings, bootstrap=True, progress=False)
    assert first.promoted and first.version == 1

    corpus = hostile_corpus(settings.triton.model_name)
    fuzzed = inject(settings, corpus)
    echoed: list[str] = []

    def echo(line: str) -> None:
        echoed.append(line)
        print(line)

    # The drift comes once the hostile backlog (read first) has left the monitor's 800-prediction window (60 s at 20
    # a second): the loop's own drift is what must heal. With hostile rows still in the window, the data alert is
    # partly about their texts and its onset estimate follows their event times, days old (seen: a retrain on a week
    # of clean traffic).
    plan = DemoPlan(rate=20.0, drift_after_s=60.0, timeout_s=300.0, after_promotion_s=15.0, seed=3)
    summary, failure = {}, None
    try:
        summary = run_loop(settings, plan, config_file, tmp_path / "demo", echo)
    except RuntimeError as exc:  # the demo's supervisor gave up on a worker: account for what happened, then fail
        failure = exc
    logs = tmp_path / "demo" / "logs"
    restarted = restarts(logs, echoed)

    # Accounting: every record on the events topic (the hostile ones and the loop's own events), read back.
    sent = read_events(settings, records_on(settings, "events-v1"))
    outputs = Outputs(settings)
    try:
        wait_until(lambda: outputs.poll().covers(sent), 60, "a prediction or dead letter for every record")
    except AssertionError as exc:
        failure = failure or exc
    outputs.drain()
    outputs.close()
    counts = account(sent, outputs)
    entry = chaos_ledger.record(
        "live-fuzz",
        produced=counts["produced"],
        predicted=counts["predicted"],
        dead_lettered=counts["dead_lettered"],
        lost=counts["lost"],
        duplicates=counts["duplicates"],
        wrong=counts["wrong"],
        restarts=restarted,
        fuzzed=dict(fuzzed),
        hostile=len(corpus),
        tracebacks=tracebacks(logs),
        dead_letters_of_other_topics=dict(outputs.other_letters),
        new_version=summary.get("new_version"),
        time_to_detect_s=summary.get("time_to_detect_s"),
        time_to_promote_s=summary.get("time_to_promote_s"),
        failure=str(failure).splitlines()[0] if failure else None,
    )
    print(entry)

    assert sum(fuzzed.values()) >= 2000 and set(fuzzed) == set(GENERATED)
    assert restarted == {name: 0 for name in restarted}, f"workers restarted: {restarted}; see {logs}"
    if failure:
        raise failure
    assert len(sent) == counts["produced"] and counts["produced"] >= fuzzed["events"]
    assert counts["lost"] == 0 and counts["wrong"] == 0, counts
    assert counts["duplicates"] == 0, counts  # no restart, so nothing redelivered
    # The loop's outcome, as in tests/e2e/test_closed_loop.py.
    assert summary["time_to_detect_s"] is not None, summary  # a drift alert
    assert summary["new_version"] and summary["new_version"] > 1, summary
    assert summary["time_to_promote_s"] is not None, summary
    assert summary["accuracy_after_promotion"] > summary["accuracy_after_drift"], summary
    assert summary["accuracy_after_promotion"] >= 0.8 * summary["accuracy_before_drift"], summary
    assert summary["events_lost"] == 0, summary
    assert summary["restarts"] == {}, summary
