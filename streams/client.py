"""Thin, batched wrappers over confluent-kafka's Producer and Consumer.

At-least-once is the contract: ``KafkaProducer.produce_batch`` returns only once the broker acknowledged every
record (or raises), and ``KafkaConsumer.commit`` commits exactly the offsets after the messages it is given. A worker
produces its outputs, waits for the acknowledgements, then commits its inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from foundation.settings import Settings
from streams.exceptions import DeliveryError, KafkaClientError

log = logging.getLogger(__name__)

# Parts of configuration keys whose values are secrets (librdkafka's names, and Java's for good measure).
_SECRET_KEYS = ("password", "secret", "key.password", "key.pem", "sasl.oauthbearer.config", "jaas", "token")

Headers = list[tuple[str, bytes]]
# A consumer fetching over a window asks for this much: the broker answers at it or when the window ends, whichever
# comes first, so a fetch carries a window's events at moderate rates instead of one event.
WINDOW_FETCH_MIN_BYTES = 64 * 1024


def fetch_window(wait_ms: int) -> dict[str, int]:
    """librdkafka settings for a consumer that fetches over windows of ``wait_ms`` (at most a fetch per window, idle or
    busy) instead of once per request produced to its topics."""
    return {"fetch.wait.max.ms": wait_ms, "fetch.min.bytes": WINDOW_FETCH_MIN_BYTES}


def client_config(settings: Settings, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka configuration shared by every client: bootstrap servers, security, and an error callback.

    Security comes from ``settings.kafka``: ``security_protocol`` (``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``,
    ``SASL_SSL``), ``sasl_mechanism`` (``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``), ``sasl_username``, the
    password from ``sasl_password`` (env ``DRIFTLOOP_KAFKA__SASL_PASSWORD``) or else the file ``sasl_password_file``
    (``DRIFTLOOP_KAFKA__SASL_PASSWORD_FILE``), and ``ssl_ca_location`` (a PEM CA bundle; unset: the system's CAs).
    The broker's host name is verified against its certificate (librdkafka's default).

    A failure that retrying cannot fix - the broker refused the credentials, or its certificate is not trusted -
    raises ``KafkaClientError`` from the client call that served it (``poll``, ``flush``, ``consume``) instead of
    being retried forever; other client errors are logged (not with ``log_level`` 0) and retried by librdkafka.
    An ``error_cb`` in ``overrides`` replaces this behaviour.

    Args:
        settings: the root settings; ``kafka.*`` is read.
        overrides: librdkafka properties by their own names (``{"group.id": "x", "log_level": 0}``).

    Raises:
        KafkaClientError: ``sasl_password_file`` cannot be read.
    """
    kafka = settings.kafka
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "security.protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        config["sasl.mechanism"] = kafka.sasl_mechanism
        config["sasl.username"] = kafka.sasl_username or ""
        config["sasl.password"] = _sasl_password(settings)
    if kafka.ssl_ca_location:
        config["ssl.ca.location"] = str(kafka.ssl_ca_location)
    config.update(overrides or {})
    config.setdefault("error_cb", _on_client_error if config.get("log_level") != 0 else _on_client_error_quiet)
    return config


def _sasl_password(settings: Settings) -> str:
    kafka = settings.kafka
    if kafka.sasl_password is not None:
        return kafka.sasl_password.get_secret_value()
    if kafka.sasl_password_file is not None:
        try:
            return kafka.sasl_password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise KafkaClientError(f"cannot read kafka.sasl_password_file: {exc.strerror}") from None
    return ""


def _fatal_error(err: KafkaError) -> KafkaClientError | None:
    """The error to raise when retrying cannot fix what the client reported, else None."""
    if err.code() == KafkaError._AUTHENTICATION:
        return KafkaClientError(f"Kafka authentication failed (check the SASL user and password): {err.str()}")
    if err.code() == KafkaError._SSL and "certificate verify failed" in err.str():
        return KafkaClientError(f"Kafka TLS verification failed (check kafka.ssl_ca_location): {err.str()}")
    return None


def _on_client_error(err: KafkaError) -> None:
    if fatal := _fatal_error(err):
        raise fatal
    log.warning("kafka client: %s", err.str())


def _on_client_error_quiet(err: KafkaError) -> None:
    if fatal := _fatal_error(err):
        raise fatal


def redacted(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a client configuration that is safe to log: secret values become ``***``."""
    return {k: ("***" if any(s in k.lower() for s in _SECRET_KEYS) else v) for k, v in config.items()}


@dataclass(frozen=True)
class Record:
    """A record to produce."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: Headers | None = None
    partition: int | None = None


class KafkaProducer:
    """An idempotent producer (acks=all) whose batches return only once the broker acknowledged them."""

    def __init__(self, settings: Settings, overrides: Mapping[str, Any] | None = None) -> None:
        # murmur2: Kafka's Java partitioner, which faust (aiokafka) uses too, so a key lands on the same
        # partition whichever client produced it (the feature worker's table changelog relies on it).
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
        config.update(overrides or {})
        log.debug("producer config %s", redacted(config))
        self._producer = Producer(config)

    def produce_batch(
        self, records: Iterable[Record], timeout_s: float = 30.0, keep_waiting: Callable[[], bool] | None = None
    ) -> int:
        """Produce ``records`` and wait for every acknowledgement.

        Args:
            records: what to produce.
            timeout_s: how long to wait for the acknowledgements.
            keep_waiting: asked each time ``timeout_s`` passes with records still unacknowledged (the broker is
                unreachable): True waits another ``timeout_s`` (the producer keeps retrying them, in order, without
                duplicates, for up to its ``message.timeout.ms``: pass ``{"message.timeout.ms": 0}``, no limit, to
                a producer that waits out outages of any length), False gives up with DeliveryError. None gives up
                at once.

        Returns:
            The number of records acknowledged.

        Raises:
            DeliveryError: a record was rejected, or not acknowledged in time.
        """
        failures: list[str] = []
        acked = 0

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            nonlocal acked
            if err is None:
                acked += 1
            else:
                failures.append(f"{msg.topic()}[{msg.partition()}]: {err}")

        sent = 0
        for record in records:
            kwargs: dict[str, Any] = {"key": record.key, "value": record.value, "on_delivery": on_delivery}
            if record.headers:
                kwargs["headers"] = record.headers
            if record.partition is not None:
                kwargs["partition"] = record.partition
            while True:
                try:
                    self._producer.produce(record.topic, **kwargs)
                    break
                except BufferError:
                    # The local queue is full: serve delivery reports until there is room (backpressure).
                    self._producer.poll(0.1)
                except KafkaException as exc:
                    raise DeliveryError(f"cannot produce to {record.topic}: {exc}") from exc
            sent += 1
            self._producer.poll(0)
        remaining = self._producer.flush(timeout_s)
        while remaining and not failures and keep_waiting is not None and keep_waiting():
            log.warning(
                "%d records not acknowledged within %.0fs (broker unreachable?); still waiting", remaining, timeout_s
            )
            remaining = self._producer.flush(timeout_s)
        if failures or remaining:
            raise DeliveryError(
                f"{len(failures) + remaining} of {sent} records not acknowledged"
                + (f"; first error: {failures[0]}" if failures else f" within {timeout_s:.0f}s")
            )
        return acked

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)

    def __enter__(self) -> KafkaProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KafkaConsumer:
    """A consumer-group member with manual commits: read a batch, handle it, commit it."""

    def __init__(
        self, settings: Settings, group_id: str, topics: Sequence[str], overrides: Mapping[str, Any] | None = None
    ) -> None:
        config = client_config(
            settings,
            {
                "group.id": group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": settings.kafka.session_timeout_ms,
                "partition.assignment.strategy": "cooperative-sticky",
            },
        )
        config.update(overrides or {})
        log.debug("consumer config %s", redacted(config))
        self._consumer = Consumer(config)
        self._consumer.subscribe(list(topics))

    def consume_batch(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Message]:
        """Up to ``max_records`` messages, waiting at most ``timeout_s`` for the first.

        Raises:
            KafkaClientError: the client reported a fatal error (partition EOF and transient errors are logged).
        """
        messages = self._consumer.consume(num_messages=max_records, timeout=timeout_s)
        batch: list[Message] = []
        for msg in messages:
            err = msg.error()
            if err is None:
                batch.append(msg)
            elif err.fatal() or err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_AUTHORIZATION_FAILED):
                raise KafkaClientError(f"consumer error: {err}")
            else:
                log.warning("consumer: %s", err)
        return batch

    def consume_available(self, max_records: int, timeout_s: float) -> list[Message]:
        """Up to ``max_records`` messages: those fetched already, else the first to arrive within ``timeout_s`` and
        those fetched with it. Returns as soon as there is something, so batches follow the load (small when it is
        low, full under a backlog); pair it with ``fetch.wait.max.ms`` and ``fetch.min.bytes`` so that the broker,
        not the worker, gathers what arrives in a window.

        Raises:
            KafkaClientError: as :meth:`consume_batch`.
        """
        batch = self.consume_batch(max_records, 0)
        if batch:
            return batch
        first = self.consume_batch(1, timeout_s)
        return first + self.consume_batch(max_records - 1, 0) if first and max_records > 1 else first

    def commit(self, messages: Sequence[Message]) -> None:
        """Synchronously commit the offset after the last of ``messages`` in each partition."""
        if not messages:
            return
        next_offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic(), msg.partition())
            next_offsets[key] = max(next_offsets.get(key, -1), msg.offset() + 1)
        offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            raise KafkaClientError(f"commit failed: {exc}") from exc

    def commit_or_redeliver(self, messages: Sequence[Message]) -> bool:
        """:meth:`commit`, except that a commit the group refused for a reason that is not fatal (a broker restart
        or outage, a rebalance: "Unknown member") is logged and False returned: the outputs are out, and the
        uncommitted records are redelivered to the partitions' owner - duplicates to dedupe, never losses.

        Raises:
            KafkaClientError: a fatal client error.
        """
        try:
            self.commit(messages)
            return True
        except KafkaClientError as exc:
            error = exc.__cause__.args[0] if isinstance(exc.__cause__, KafkaException) else None
            if not isinstance(error, KafkaError) or error.fatal():
                raise
            log.warning("commit failed (%s); %d records will be redelivered", error, len(messages))
            return False

    def committed(self, topic: str, partitions: Iterable[int], timeout_s: float = 10.0) -> dict[int, int]:
        """The group's committed offset per partition (negative when none)."""
        tps = [TopicPartition(topic, p) for p in partitions]
        return {tp.partition: tp.offset for tp in self._consumer.committed(tps, timeout=timeout_s)}

    def close(self) -> None:
        """Leave the group (triggers a rebalance for the others); uncommitted messages are redelivered."""
        self._consumer.close()

    def __enter__(self) -> KafkaConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
