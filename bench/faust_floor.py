"""faust's own cost per event: an agent that takes the events in batches, as the feature worker does, and only
acknowledges them (no parse, no window, no Feast, no table). Started by ``bench/feature_worker.py --bare``.

    .venv/bin/python bench/faust_floor.py --consumer {stock,driftloop} --broker HOST:PORT --topic T --group G \
        --partitions N --datadir DIR --web-port PORT

``stock``: faust's own consumer and stream (``take_events``, ``stream.ack``). ``driftloop``: the feature worker's
consumer (``streams.ledger_consumer``: windowed fetches, the fetch ledger, one task per record hand-over) and its
batches taken from the channel's queue (``streams.event_batches``), the ledger told of each delivery as the feature
worker's fold does.
"""

from __future__ import annotations

import argparse
import time

import faust

from foundation.heap import freeze_startup_heap
from streams.event_batches import acknowledge as acknowledge_batch
from streams.event_batches import batches
from streams.fetch_ledger import FetchLedger
from streams.ledger_consumer import LedgerConsumer

BATCH = 2000  # workers.feature_push_batch's default
WITHIN_S = 0.5  # workers.feature_push_interval_s's default
STALL_S = 30.0


def create_app(args: argparse.Namespace) -> faust.App:
    """A faust app whose one agent acknowledges every event of ``args.topic``, in batches."""
    app = faust.App(
        args.group,
        broker=f"kafka://{args.broker}",
        store="memory://",
        topic_partitions=args.partitions,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        web_enabled=False,
        web_port=args.web_port,
        web_host="127.0.0.1",
        datadir=args.datadir,
        autodiscover=False,
    )
    ledger = None
    if args.consumer == "driftloop":
        ledger = app.fetch_ledger = FetchLedger(args.topic, STALL_S)
        app.transport.Consumer = LedgerConsumer
    events = app.topic(args.topic, key_serializer="raw", value_serializer="raw")

    @app.agent(events)
    async def acknowledge(stream: faust.StreamT) -> None:
        if ledger is None:  # faust's own way: the stream's buffering generator, an ack per event through the stream
            async for batch in stream.noack().take_events(BATCH, within=WITHIN_S):
                for event in batch:
                    await stream.ack(event)
            return
        async for batch in batches(stream.channel.queue, BATCH, WITHIN_S):  # the feature worker's way
            now = time.monotonic()
            for event in batch:
                ledger.delivered(event.message.tp, event.message.offset, now)
            acknowledge_batch(batch, app.consumer, app.monitor.stream_inbound_time)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--consumer", choices=("stock", "driftloop"), default="driftloop")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--datadir", required=True)
    parser.add_argument("--web-port", type=int, required=True)
    args = parser.parse_args()
    worker = faust.Worker(create_app(args), loglevel="warning", quiet=True, redirect_stdouts=False)
    freeze_startup_heap()  # as the feature worker does
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
