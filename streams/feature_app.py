"""The feature worker: a faust app that folds events into per-entity windows and pushes the features to Feast.

State lives in a changelog-backed faust table (it survives a restart: faust restores it from the changelog topic).
Features go to Feast (online + offline) in batches; the batch's events are acknowledged only after the push, so a
crash replays them, and the windows count a replayed event once (see ``streams.windows``).

Nothing is committed unwritten. While the store cannot be written (``FeatureStoreNotReady``: Redis down, sqlite
locked, an offline file unwritable) the batch is held unacknowledged and the push retried with exponential backoff up
to ``workers.outage_backoff_max_s``, for as long as the outage lasts; the worker beats its liveness meanwhile and
counts ``driftloop_outage_retries_total{worker="features",dependency="feast"}``. A push that fails otherwise while the
store answers a probe read is the rows' fault: the batch is bisected, and a row that fails alone twice is skipped and
counted (``driftloop_skipped_records_total{topic="events-v1"}``), never retried forever. No record crashes the agent:
one that cannot be folded is skipped and counted the same way (invalid events are the inference worker's to
dead-letter).

Bounded shutdown: on SIGTERM/SIGINT the pusher stops retrying at once (the held batch stays unacknowledged and is
redelivered), faust stops and commits what was acknowledged, and a watchdog ends the process after
``workers.shutdown_grace_s`` if faust has not finished by then (a stopped broker makes faust wait for minutes).
Exiting without committing is safe: the uncommitted events are redelivered and counted once.

Events faust fetches and then drops around a rebalance are not lost: the app's consumer records what it fetches in a
:class:`~streams.fetch_ledger.FetchLedger`, which hands such events back to the agent when a later one of their
partition arrives (folded first, in offset order) or, when none comes, has the partition read again.

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

from features.exceptions import FeatureStoreNotReady
from features.store import online_features, open_store, push_stream_features
from foundation.health import HealthServer
from foundation.heap import freeze_startup_heap
from foundation.retry import async_policy
from foundation.settings import Settings
from foundation.shutdown import exit_after
from streams.client import client_config
from streams.event_batches import acknowledge, batches
from streams.fetch_ledger import FetchLedger
from streams.ledger_consumer import LedgerConsumer
from streams.metrics import COMMIT_GAP_REREADS, DROPPED_EVENTS_RECOVERED, RECOVERY_RESTARTS, WorkerMetrics
from streams.schemas import InvalidEvent, check_record_of, parse_event
from streams.skips import SkippedRecords
from streams.windows import FEATURES, EntityWindow, Features

log = logging.getLogger(__name__)

TABLE = "entity-windows"
EVENTS_TOPIC = "events-v1"  # the contract name skipped records are counted under
PROBE_ENTITY = "__driftloop_health__"  # read to tell whether the store answers while a push fails
FIRST_RETRY_S = 0.2
COMMIT_GAP_CHECK_S = 5.0
RECOVERY_STUCK_S = 20.0
SKIPPED = SkippedRecords()  # this process's skipped records (metric + rate-limited log)


def create_app(settings: Settings, replica: int = 0, health: HealthServer | None = None) -> faust.App:
    """Build the faust app of the feature worker (one per process); ``health`` is beaten while a push waits."""
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
    events_topic = settings.kafka.topic("events-v1")
    app.fetch_ledger = FetchLedger(events_topic, workers.commit_stall_s)
    app.transport.Consumer = LedgerConsumer  # this app's consumer shows the ledger what it fetches

    @app.on_partitions_revoked.connect
    async def forget_revoked(app: faust.App, revoked: set, **_: object) -> None:
        app.fetch_ledger.revoked(revoked)

    @app.on_partitions_assigned.connect
    async def restart_assigned(app: faust.App, assigned: set, **_: object) -> None:
        app.fetch_ledger.assigned(assigned)

    events = app.topic(events_topic, key_serializer="raw", value_serializer="raw")
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
    pusher = FeaturePusher(settings, health)

    @app.agent(events)
    async def aggregate(stream: faust.StreamT) -> None:
        """Fold each batch of events into the windows, push the features, then acknowledge the batch.

        A batch whose push did not succeed is never acknowledged: when the worker stops while the store is down,
        the agent returns with the batch unacknowledged, and it is redelivered after the restart.
        """
        ledger = app.fetch_ledger
        # taken from the channel's queue, not through the stream: see streams.event_batches
        async for batch in batches(stream.channel.queue, workers.feature_push_batch, workers.feature_push_interval_s):
            started = time.monotonic()
            ledger.batch_started()
            rows, recovered = fold_batch(windows, batch, SKIPPED, ledger, workers.max_event_ahead_s)
            if not await pusher.push(rows):
                log.warning(
                    "stopping with a batch unpushed: %d events left unacknowledged, redelivered later",
                    len(batch),
                    extra={"events": len(batch)},
                )
                return
            acknowledge(batch, app.consumer, app.monitor.stream_inbound_time)
            for tp, record in recovered:
                app.consumer.ack_record(tp, record)
            ledger.batch_done(time.monotonic())
            pusher.metrics.batch_done(len(batch) + len(recovered), len(rows), 0, time.monotonic() - started)

    @app.timer(interval=COMMIT_GAP_CHECK_S)
    async def reread_stalled_partitions() -> None:
        """Read again the events faust fetched and dropped with none after them (see ``streams.fetch_ledger``)."""
        now = time.monotonic()
        if restart_stuck_recovery(app, now):
            return
        if app.rebalancing:
            return  # faust seeks every partition to its committed offset when the rebalance ends
        for tp, offset in app.fetch_ledger.stalled(now).items():
            log.warning(
                "events of %s[%d] from offset %d fetched and never delivered: reading them again",
                tp.topic,
                tp.partition,
                offset,
                extra={"partition": tp.partition, "offset": offset},
            )
            try:
                await app.consumer.seek_wait({tp: offset})
            except Exception as exc:  # noqa: BLE001 - a rebalance meanwhile: the new owner reads from the commit
                log.warning("seek of %s[%d] failed: %s: %s", tp.topic, tp.partition, type(exc).__name__, exc)
                continue
            COMMIT_GAP_REREADS.labels("features").inc()

    app.windows_table = windows  # for tests and the CLI: read the state a worker holds
    app.feature_pusher = pusher  # for run(): told to stop retrying on SIGTERM
    return app


def restart_stuck_recovery(app: faust.App, now: float) -> bool:
    """Restart a table recovery that has received nothing from its changelogs for ``RECOVERY_STUCK_S``.

    Seen in the three-feature-replica test (about one run in six): after a rebalance, faust's recovery resumes the
    changelog partitions and then never receives a record from them, for as long as the test waits, while the
    worker's partitions stand still. Restarting it is what faust does when another rebalance comes: it builds the
    offsets again, seeks the changelog partitions and resumes them.
    """
    recovery = app.tables.recovery
    # faust keeps these on the service with no public accessor; read-only here
    started, received = recovery._recovery_started_at, recovery._active_events_received_at
    if not recovery.in_recovery or started is None or received or now - started < RECOVERY_STUCK_S:
        return False
    if not recovery.active_remaining_total():
        return False
    log.warning("table recovery has received nothing for %.0f s: restarting it", now - started)
    RECOVERY_RESTARTS.labels("features").inc()
    recovery.signal_recovery_start.set()
    return True


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


def fold_batch(
    windows: faust.Table,
    batch: list,
    skipped: SkippedRecords,
    ledger: FetchLedger | None = None,
    max_ahead_s: float | None = None,
) -> tuple[list[dict], list]:
    """Fold each event of a faust batch, in offset order per partition (``max_ahead_s``: see :func:`fold`).

    Returns:
        The feature rows of the events that count (see :func:`fold`), and the records faust fetched and dropped that
        ``ledger`` handed back, with their partitions: folded before the event that revealed them, to be acknowledged
        with the batch.

    Each entity's window is written to the table once per batch, after the batch is folded: one changelog record per
    entity and batch instead of one per event (the record holds the whole window, so per event it cost as much as the
    window held). A crash before the batch is acknowledged replays it, and the windows count a replayed event once.
    """
    staged = BatchWindows(windows)
    rows, recovered = [], []
    now = time.monotonic()
    for event in batch:
        message = event.message
        if ledger is not None:
            tp = message.tp
            for missed in ledger.delivered(tp, message.offset, now):
                recovered.append((tp, missed))
                where = {"partition": tp.partition, "offset": missed.offset}
                written_at = missed.timestamp / 1000 if missed.timestamp is not None else None  # aiokafka: ms
                rows.append(fold(staged, missed.key, missed.value, skipped, written_at, max_ahead_s, **where))
        where = {"partition": message.partition, "offset": message.offset}
        rows.append(fold(staged, event.key, event.value, skipped, message.timestamp, max_ahead_s, **where))
    staged.flush()
    if recovered:
        DROPPED_EVENTS_RECOVERED.labels("features").inc(len(recovered))
        log.warning(
            "%d events faust fetched and never delivered were folded from the fetch ledger",
            len(recovered),
            extra={"events": len(recovered)},
        )
    return [row for row in rows if row is not None], recovered


class BatchWindows:
    """A batch's view of the windows table: each entity's window is taken from the table once, folded in place, and
    written back by :meth:`flush`."""

    def __init__(self, table: faust.Table | dict) -> None:
        self.table = table
        self.changed: dict[bytes, EntityWindow] = {}

    def add(self, key: bytes, event_id: str, event_time: float, text_length: int) -> Features:
        """Fold one event into the window of ``key`` and return its features (see ``streams.windows``)."""
        window = self.changed.get(key)
        if window is None:
            window = self.changed[key] = EntityWindow(self.table.get(key))
        return window.add(event_id, event_time, text_length)

    def flush(self) -> None:
        """Write each changed window to the table (and so to its changelog) once."""
        for key, window in self.changed.items():
            self.table[key] = window.state()
        self.changed.clear()


def fold(
    windows: faust.Table | dict | BatchWindows,
    key: bytes | None,
    value: bytes | None,
    skipped: SkippedRecords | None = None,
    written_at: float | None = None,
    max_ahead_s: float | None = None,
    **where: object,
) -> dict | None:
    """Fold one raw event into its entity's window and return its feature row (plus ``event_id``, not pushed).

    None for a record the inference worker dead-letters (``streams.schemas.check_record_of`` with the record's
    timestamp ``written_at`` and ``max_ahead_s``, after the event contract) and for a record that cannot be
    folded for any other reason: that one is skipped and counted on ``skipped`` (with ``where``, e.g. its partition
    and offset, in the log line), so that no record can crash the agent and stall its partition.
    """
    staged = windows if isinstance(windows, BatchWindows) else BatchWindows(windows)
    try:
        return _fold(staged, key, value, written_at, max_ahead_s)
    except Exception as exc:  # noqa: BLE001 - any record, any fault: skip it, never crash the agent
        (skipped or SKIPPED).skip(EVENTS_TOPIC, f"fold failed: {type(exc).__name__}: {exc}", **where)
        return None
    finally:
        if staged is not windows:
            staged.flush()


def _fold(
    windows: BatchWindows, key: bytes | None, value: bytes | None, written_at: float | None, max_ahead_s: float | None
) -> dict | None:
    try:
        event = parse_event(value)
        check_record_of(event, key, written_at, max_ahead_s)
    except InvalidEvent:
        return None  # the inference worker dead-letters it
    features = windows.add(key, event.event_id, event.event_time.timestamp(), len(event.text))
    return {"entity_id": event.entity_id, "event_timestamp": event.event_time, **features, "event_id": event.event_id}


class FeaturePusher:
    """Pushes feature rows to Feast off the event loop; holds them through store outages, never drops them.

    :meth:`push` returns only once every row is written (or skipped as the rows' own fault), or when the worker is
    stopping (:meth:`stop`): then it returns False and the caller must not acknowledge the batch.
    """

    def __init__(self, settings: Settings, health: HealthServer | None = None) -> None:
        self.settings = settings
        self.health = health
        self.metrics = WorkerMetrics("features")
        self.skipped = SKIPPED
        self._store = None
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Stop retrying now (call on the event loop): a held batch stays unacknowledged."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def push(self, rows: list[dict]) -> bool:
        """Write ``rows`` to Feast, waiting out outages with backoff; True once written, False when stopping."""
        if not rows:
            return True
        if self._store is None:
            self._store = await asyncio.to_thread(open_store, self.settings)
        return await self._push_held(rows)

    async def _push_held(self, rows: list[dict], failed_alone: bool = False) -> bool:
        """Push ``rows`` until written; bisect them when the store answers but refuses them."""
        while True:
            try:
                error = await self._push_through_outages(rows)
            except (_Stopping, _Outage):  # an outage is retried until the worker stops
                return False
            if error is None:
                return True
            if len(rows) > 1:
                middle = len(rows) // 2  # halves in stream order: an entity's rows stay oldest first
                return await self._push_held(rows[:middle]) and await self._push_held(rows[middle:])
            if not failed_alone:
                failed_alone = True  # once more alone before calling it deterministic
                continue
            self._skip(rows[0], error)
            return True

    async def _push_through_outages(self, rows: list[dict]) -> Exception | None:
        """Push ``rows``, waiting out store outages with ``foundation.retry``'s backoff: None once written, the error
        when the store answers but refused them.

        Raises:
            _Stopping, _Outage: the worker is stopping (during a push or an outage).
        """
        retries = async_policy(
            retry_on=_Outage,
            initial_s=FIRST_RETRY_S,
            max_s=self.settings.workers.outage_backoff_max_s,
            what="feast push",
            stop_when=lambda: self.stopping,
            sleep=self._wait,
            on_retry=lambda attempt, delay_s, outage: self._outage(outage, attempt, delay_s, len(rows)),
        )
        error: Exception | None = None
        async for attempt in retries:
            with attempt:
                if self.stopping:
                    raise _Stopping
                error = await self._attempt(rows)
                if error is not None:
                    if self.stopping:
                        raise _Stopping
                    if isinstance(error, FeatureStoreNotReady) or not await self._store_answers():
                        raise _Outage(error)
        return error

    async def _attempt(self, rows: list[dict]) -> Exception | None:
        """One push of ``rows`` in a thread, given up (not awaited) if the worker stops meanwhile or it takes longer
        than ``workers.feature_push_timeout_s`` (a store that hangs is an outage: the push is tried again, and a
        late completion of the abandoned one writes the same rows, which is harmless)."""
        frame = pd.DataFrame(rows, columns=["entity_id", "event_timestamp", *FEATURES])
        started = time.monotonic()
        push = asyncio.ensure_future(asyncio.to_thread(push_stream_features, self._store, frame))
        stop = asyncio.ensure_future(self._stop.wait())
        timeout_s = self.settings.workers.feature_push_timeout_s
        try:
            await asyncio.wait({push, stop}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not push.done():
            push.add_done_callback(_consume_result)  # the thread runs on; its outcome no longer matters
            if self.stopping:
                return FeatureStoreNotReady("push abandoned: the worker is stopping")
            return FeatureStoreNotReady(f"push of {len(rows)} rows did not finish within {timeout_s:.0f}s")
        error = push.exception()
        if error is None:
            log.debug("pushed %d feature rows in %.3fs", len(rows), time.monotonic() - started)
        return error

    async def _store_answers(self) -> bool:
        """Whether the online store answers a read now: if so, a failing push is the rows' fault."""
        try:
            probe = asyncio.to_thread(online_features, self._store, [PROBE_ENTITY])
            await asyncio.wait_for(probe, self.settings.workers.feature_push_timeout_s)
        except Exception as exc:  # noqa: BLE001 - whatever the reason (a timeout too), the store does not answer
            log.debug("probe read of the feature store failed: %s", exc)
            return False
        return True

    def _outage(self, outage: BaseException, attempts: int, delay: float, rows: int) -> None:
        error = outage.error if isinstance(outage, _Outage) else outage
        self.metrics.outage("feast")
        log.warning(
            "feast unavailable (attempt %d, next in %.1fs): %s",
            attempts,
            delay,
            error,
            extra={"attempt": attempts, "rows": rows, "dependency": "feast"},
        )
        if self.health is not None:
            self.health.beat()  # waiting on purpose, not stuck

    async def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the worker stops first; False when it stops (the retries' sleep)."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return True
        return False

    def _skip(self, row: dict, error: Exception) -> None:
        reason = f"feature push refused the row: {type(error).__name__}: {error}"
        self.skipped.skip(EVENTS_TOPIC, reason, event_id=row.get("event_id"), entity_id=row.get("entity_id"))


class _Stopping(Exception):  # noqa: N818 - control flow of the pusher, never raised out of it
    """The worker is stopping: the held batch stays unacknowledged."""


class _Outage(Exception):  # noqa: N818 - control flow of the pusher, never raised out of it
    """The store cannot be written now (``error`` says why): retried with backoff."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _consume_result(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved" warning


class FeatureWorker(faust.Worker):
    """faust's worker, told on SIGTERM/SIGINT to stop the pusher's retries and to exit within the grace period."""

    def __init__(self, app: faust.App, *, on_stop_requested, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self._on_stop_requested = on_stop_requested

    # mode's Worker installs these two as the loop's signal handlers (mode.worker.Worker, pinned with faust).
    def _on_sigterm(self) -> None:
        self._on_stop_requested()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._on_stop_requested()
        super()._on_sigint()


def run(settings: Settings, replica: int = 0, health: HealthServer | None = None) -> None:
    """Run one feature worker until SIGTERM/SIGINT: the pusher stops retrying, faust stops the agent and commits
    acknowledged offsets, and the process exits within ``workers.shutdown_grace_s`` whatever is unreachable."""
    app = create_app(settings, replica, health)
    if health is not None:

        @app.timer(interval=5.0)
        async def heartbeat() -> None:
            health.beat()

    def stop_requested() -> None:
        app.feature_pusher.stop()
        exit_after(settings.workers.shutdown_grace_s, "the feature worker")

    worker = FeatureWorker(
        app, on_stop_requested=stop_requested, loglevel=settings.log.level.lower(), quiet=True, redirect_stdouts=False
    )
    freeze_startup_heap()
    worker.execute_from_commandline()
