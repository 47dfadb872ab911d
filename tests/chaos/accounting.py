"""The accounting the fault scenarios share: what went onto the events topic, and what the workers made of it.

Truth is read back from the broker, not taken from the producer: every record on the events topic is either a valid
event (it must end as one prediction, deduplicated by ``event_id``) or a record the contract refuses (it must end as
one dead letter, matched by its source partition and offset). A dead letter for a valid event, or a prediction for
an id never produced, is a wrong answer and is counted as such.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, TopicPartition

from foundation.settings import Settings
from streams import KafkaConsumer, KafkaProducer
from streams.client import client_config
from streams.generator import synthetic_records
from streams.inference import checked_event
from streams.schemas import DeadLetter, InvalidEvent

__all__ = [
    "FOREIGN_HEADER",
    "Outputs",
    "Producer",
    "Sent",
    "account",
    "committed_total",
    "miscounted_windows",
    "read_events",
    "settle",
    "warm_up",
]


#: A header a scenario puts on records it writes itself onto an output topic (hostile predictions, say): they are
#: not outputs of the workers, and :class:`Outputs` passes them by.
FOREIGN_HEADER = "chaos-foreign"


def foreign(msg) -> bool:
    """True for a record a scenario wrote itself (it carries :data:`FOREIGN_HEADER`)."""
    return any(name == FOREIGN_HEADER for name, _value in msg.headers() or ())


@dataclass
class Sent:
    """What went onto the events topic: valid event ids by (partition, offset), and refused records' positions."""

    valid: dict[tuple[int, int], str] = field(default_factory=dict)
    refused: set[tuple[int, int]] = field(default_factory=set)
    entity: dict[str, str] = field(default_factory=dict)  # event_id -> entity_id

    @property
    def ids(self) -> set[str]:
        return set(self.valid.values())

    def __len__(self) -> int:
        return len(self.valid) + len(self.refused)


def read_events(settings: Settings, expected: int, timeout_s: float = 60.0) -> Sent:
    """Read the events topic back from the start (a fresh group) until ``expected`` records were seen."""
    sent = Sent()
    topic = settings.kafka.topic("events-v1")
    with KafkaConsumer(settings, f"readback-{uuid.uuid4().hex[:6]}", [topic]) as consumer:
        deadline = time.monotonic() + timeout_s
        while len(sent) < expected and time.monotonic() < deadline:
            for msg in consumer.consume_batch(1000, 0.5):
                position = (msg.partition(), msg.offset())
                try:  # the inference worker's judgment: the contract, then the record rules
                    event = checked_event(msg, settings.workers.max_event_ahead_s)
                except InvalidEvent:
                    sent.refused.add(position)
                    continue
                sent.valid[position] = event.event_id
                sent.entity[event.event_id] = event.entity_id
    return sent


class Outputs:
    """Everything the workers wrote to the predictions and dead-letter topics, read as it arrives (call :meth:`poll`);
    records a scenario wrote there itself (marked by :data:`FOREIGN_HEADER`) are passed by."""

    def __init__(self, settings: Settings) -> None:
        self._dlq = settings.kafka.topic("dlq-v1")
        self.predictions: Counter[str] = Counter()  # event_id -> predictions seen
        self.letters: Counter[tuple[int, int]] = Counter()  # source (partition, offset) -> dead letters seen
        self.features: dict[str, dict] = {}  # event_id -> the features of its (last) prediction
        # Dead letters of records from other topics (the drift monitor dead-letters invalid predictions): counted
        # per source topic, apart from the events' ledger, whose positions they would otherwise collide with.
        self._events = settings.kafka.topic("events-v1")
        self.other_letters: Counter[str] = Counter()
        # Records already read: this observer commits nothing, so after a broker restart its group may read the
        # topics again from the start - a record read twice is not a duplicate output.
        self._seen: set[tuple[str, int, int]] = set()
        self._consumer = KafkaConsumer(
            settings, f"chaos-{uuid.uuid4().hex[:6]}", [settings.kafka.topic("predictions-v1"), self._dlq]
        )

    def poll(self) -> Outputs:
        for msg in self._consumer.consume_batch(1000, 0.2):
            position = (msg.topic(), msg.partition(), msg.offset())
            if position in self._seen:
                continue
            self._seen.add(position)
            if foreign(msg):
                continue
            if msg.topic() == self._dlq:
                letter = DeadLetter.model_validate_json(msg.value())
                if letter.source.topic != self._events:
                    self.other_letters[letter.source.topic] += 1
                    continue
                self.letters[(letter.source.partition, letter.source.offset)] += 1
            else:
                prediction = json.loads(msg.value())
                if prediction.get("role", "champion") == "shadow":
                    continue
                self.predictions[prediction["event_id"]] += 1
                self.features[prediction["event_id"]] = prediction["features"]
        return self

    def covers(self, sent: Sent) -> bool:
        """Every valid event has a prediction and every refused record a dead letter."""
        return sent.ids <= set(self.predictions) and sent.refused <= set(self.letters)

    def drain(self, seconds: float = 2.0) -> Outputs:
        """Keep reading for ``seconds`` (a late duplicate, if there were one)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.poll()
        return self

    def close(self) -> None:
        self._consumer.close()


def settle(sent: Sent, outputs: Outputs) -> dict[str, int]:
    """Read what is still on its way (a late duplicate shows), stop reading, and :func:`account`."""
    outputs.drain()
    outputs.close()
    return account(sent, outputs)


def account(sent: Sent, outputs: Outputs) -> dict[str, int]:
    """The ledger's counts, plus ``wrong``: dead letters for valid events and predictions for unknown ids."""
    ids = sent.ids
    predicted = len(ids & set(outputs.predictions))
    dead = len(sent.refused & set(outputs.letters))
    wrong = len(set(sent.valid) & set(outputs.letters)) + len(set(outputs.predictions) - ids)
    duplicates = sum(n - 1 for n in outputs.predictions.values()) + sum(n - 1 for n in outputs.letters.values())
    return {
        "produced": len(sent),
        "predicted": predicted,
        "dead_lettered": dead,
        "lost": len(ids) - predicted + len(sent.refused) - dead,
        "duplicates": duplicates,
        "wrong": wrong,
    }


class Producer(threading.Thread):
    """Sends synthetic events (``malformed_share`` of them refused by the contract) at ``rate`` per second from a
    background thread, in acknowledged chunks; survives a broker outage of up to ``ack_timeout_s`` per chunk
    (the idempotent producer retries without duplicating). ``error`` holds what stopped it, if anything."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        seed: int,
        rate: float,
        malformed_share: float = 0.05,
        chunk: int = 50,
        ack_timeout_s: float = 120.0,
    ) -> None:
        super().__init__(daemon=True)
        self.settings, self.count, self.seed, self.rate = settings, count, seed, rate
        self.malformed_share, self.chunk, self.ack_timeout_s = malformed_share, chunk, ack_timeout_s
        self.acknowledged = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        records = [
            r
            for batch in synthetic_records(
                self.settings, self.count, seed=self.seed, malformed_share=self.malformed_share, labels=False
            )
            for r in batch
        ]
        started = time.monotonic()
        try:
            with KafkaProducer(self.settings) as producer:
                for i in range(0, len(records), self.chunk):
                    ahead = started + i / self.rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                    chunk = records[i : i + self.chunk]
                    self.acknowledged += producer.produce_batch(chunk, timeout_s=self.ack_timeout_s)
        except BaseException as exc:  # noqa: BLE001 - reported to the test through ``error``
            self.error = exc

    def finish(self, timeout_s: float = 180.0) -> int:
        """Wait for the thread; returns the records acknowledged. Raises what stopped it."""
        self.join(timeout_s)
        if self.is_alive():
            raise AssertionError(f"the producer did not finish within {timeout_s:.0f}s")
        if self.error is not None:
            raise self.error
        return self.acknowledged


def committed_total(settings: Settings, group: str, topic: str) -> int:
    """How many records of ``topic`` the group has committed (all partitions together); 0 when it cannot tell."""
    consumer = Consumer(client_config(settings, {"group.id": group, "log_level": 0}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return sum(max(tp.offset, 0) for tp in committed)
    except KafkaException:
        return 0
    finally:
        consumer.close()


def warm_up(settings: Settings, count: int, seed: int) -> int:
    """Produce ``count`` valid events at once and return how many went out. A scenario waits for the workers to answer
    them before its stream starts: a worker takes seconds to start on a busy machine; a fault must land mid-stream."""
    producer = Producer(settings, count, seed=seed, rate=1000.0, malformed_share=0.0)
    producer.start()
    return producer.finish()


def miscounted_windows(settings: Settings, sent: Sent) -> tuple[int, list[str]]:
    """How many entities the valid events produced touch, and those whose feature window (the faust table, read from
    its changelog) does not hold exactly their events, each counted once in the features made from it: a replay
    counted twice, or an event lost."""
    from streams.windows import features_at, fingerprint
    from tests.streams.support import table_state

    expected: dict[str, set[str]] = {}
    for event_id in sent.ids:
        expected.setdefault(sent.entity[event_id], set()).add(event_id)
    table = table_state(settings)
    miscounted = []
    for entity, ids in expected.items():
        state = table.get(entity, {})
        if sorted(state.get("ids", [])) != sorted(fingerprint(i) for i in ids) or (
            features_at(state["times"], state["lengths"], state["times"][-1])["msg_count_24h"] != len(ids)
        ):
            miscounted.append(entity)
    return len(expected), miscounted
