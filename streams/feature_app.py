"""The feature worker: a faust app that folds events into per-entity windows and pushes the features to Feast.

State lives in a changelog-backed faust table (it survives a restart: faust restores it from the changelog topic).
Features go to Feast (online + offline) in batches; the batch's events are acknowledged only after the push, so a
crash replays them, and the windows count a replayed event once (see ``streams.windows``).

The table is written with the partitioner (``use_partitioner=True``), so its changelog partition is the key's
murmur2 partition: the same as the events topic's, because driftloop's producers use Kafka's Java partitioner too.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

import faust
import pandas as pd

from driftloop.health import HealthServer
from driftloop.settings import Settings
from features.store import open_store, push_stream_features
from streams.client import client_config
from streams.metrics import WorkerMetrics
from streams.schemas import InvalidEvent, parse_event
from streams.windows import FEATURES, add_event

log = logging.getLogger(__name__)

TABLE = "entity-windows"


def create_app(settings: Settings, replica: int = 0) -> faust.App:
    """Build the faust app of the feature worker (one per process)."""
    workers = settings.workers
    datadir = workers.faust_data_dir / f"replica-{replica}"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        workers.features_group,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(settings),
        store="memory://",
        topic_partitions=settings.kafka.topics["events-v1"].partitions,
        topic_replication_factor=workers.faust_replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        web_enabled=False,
        web_port=workers.faust_web_port + replica,
        web_host="127.0.0.1",
        datadir=str(datadir),
        table_standby_replicas=0,
        autodiscover=False,
    )
    events = app.topic(settings.kafka.topic("events-v1"), key_serializer="raw", value_serializer="raw")
    # key_type on the table too: faust derives the changelog topic's key serializer from it (json when unset), and a
    # json key serializer cannot read the raw keys back on recovery. No value_type: faust takes any type it is given
    # for a model (``dict.from_data``); unset, the json values come back as dicts. Either mistake leaves a restarted
    # worker waiting for its changelog forever ("Error in recovery ...").
    windows = app.Table(
        TABLE,
        schema=faust.Schema(key_type=bytes, key_serializer="raw", value_serializer="json"),
        key_type=bytes,
        partitions=settings.kafka.topics["events-v1"].partitions,
        use_partitioner=True,
    )
    pusher = FeaturePusher(settings)

    @app.agent(events)
    async def aggregate(stream: faust.StreamT) -> None:
        """Fold each batch of events into the windows, push the features, then acknowledge the batch."""
        async for batch in stream.noack().take_events(
            workers.feature_push_batch, within=workers.feature_push_interval_s
        ):
            rows = []
            for event in batch:
                row = fold(windows, event.key, event.value)
                if row is not None:
                    rows.append(row)
            await pusher.push(rows)
            for event in batch:
                await stream.ack(event)
            pusher.metrics.batch_done(len(batch), len(rows), 0, 0.0)

    app.windows_table = windows  # for tests and the CLI: read the state a worker holds
    return app


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """faust's (aiokafka's) credentials for the security the confluent-kafka clients get from ``client_config``:
    TLS trusting ``kafka.ssl_ca_location`` (else the system's CAs, host name checked), SASL user and password."""
    config = client_config(settings)
    protocol = str(config["security.protocol"]).upper()
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=config.get("ssl.ca.location"))
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=config.get("sasl.username"),
        password=config.get("sasl.password"),
        ssl_context=context,
        mechanism=str(config.get("sasl.mechanism", "PLAIN")).upper(),
    )


def fold(windows: faust.Table, key: bytes | None, value: bytes | None) -> dict | None:
    """Fold one raw event into its entity's window; None for an invalid event (the inference worker DLQs it)."""
    try:
        event = parse_event(value)
    except InvalidEvent:
        return None
    entity = event.entity_id.encode()
    if key != entity:
        return None  # keyed against the contract: the inference worker dead-letters it
    state, features = add_event(windows.get(entity), event.event_id, event.event_time.timestamp(), len(event.text))
    windows[entity] = state
    return {"entity_id": event.entity_id, "event_timestamp": event.event_time, **features}


class FeaturePusher:
    """Pushes feature rows to Feast off the event loop; retries with backoff so a locked store delays, not drops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = WorkerMetrics("features")
        self._store = None

    async def push(self, rows: list[dict], retries: int = 5) -> None:
        if not rows:
            return
        if self._store is None:
            self._store = await asyncio.to_thread(open_store, self.settings)
        frame = pd.DataFrame(rows, columns=["entity_id", "event_timestamp", *FEATURES])
        delay = 0.2
        for attempt in range(retries + 1):
            try:
                started = time.monotonic()
                await asyncio.to_thread(push_stream_features, self._store, frame)
                log.debug("pushed %d feature rows in %.3fs", len(rows), time.monotonic() - started)
                return
            except Exception as exc:
                if attempt == retries:
                    raise
                log.warning("Feast push failed (%s); retry %d in %.1fs", exc, attempt + 1, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def run(settings: Settings, replica: int = 0, health: HealthServer | None = None) -> None:
    """Run one feature worker until SIGTERM/SIGINT (faust stops the agent and commits acknowledged offsets)."""
    app = create_app(settings, replica)
    if health is not None:

        @app.timer(interval=5.0)
        async def heartbeat() -> None:
            health.beat()

    worker = faust.Worker(app, loglevel=settings.log.level.lower(), quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
