"""The feature worker's CPU per event as its entities' windows fill, measured in one run.

    .venv/bin/python bench/feature_worker.py [--rounds 4] [--events 20000] [--entities 50] [--plot fw.png]

One feature worker, as ``driftloop workers run --role features`` starts it with the default settings, on the local
stack's broker when it runs (else a private one), with its own Feast store (sqlite online store) and faust state in a
temporary folder. Per round, with the worker stopped (SIGSTOP), a backlog of ``--events`` events over ``--entities``
entities goes onto the topic (dated 100 ms apart, ending now); the worker drains it once resumed, until its group has
committed every event. Each round adds ``events / entities`` events to every window (windows keep a day), so the rounds
show what a fuller window costs: events/s, and CPU microseconds per event of the feature worker and of the broker
(``bench/procstat.py``; the broker's includes the benchmark's own writes and the worker's changelog).

``--bare stock|driftloop`` runs ``bench/faust_floor.py`` in the worker's place: a faust agent that only acknowledges
the events (with faust's own consumer, or with the feature worker's), so that faust's share of the worker's cost shows
apart from the fold, the push and the table.

Prints one JSON line; ``--plot`` draws CPU per event against events per window.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import procstat
from pipeline import broker, delete_topics, free_port, group_caught_up, private_settings, wait_for

from features.store import apply_repo
from foundation.settings import load_settings
from streams import KafkaProducer, ensure_topics
from streams.client import Record
from streams.generator import EVENT_SPACING, produce
from streams.synthetic import SyntheticStream

DRAIN_TIMEOUT_S = 300
WARM_UP = 500  # events folded before the first round (they count in the windows)


def backlog(settings, count: int, entities: int, seed: int) -> list[list[Record]]:
    """``count`` events over ``entities`` entities, 100 ms apart, the last one dated now."""
    topic = settings.kafka.topic("events-v1")
    stream = SyntheticStream(seed=seed, entities=entities)
    events = stream.stream(count, start=datetime.now(UTC) - count * EVENT_SPACING, interval=EVENT_SPACING)
    return [[Record(topic, e.event.to_bytes(), key=e.event.entity_id.encode())] for e in events]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="backlogs drained one after the other (default 4)")
    parser.add_argument("--events", type=int, default=20_000, help="events per round (default 20,000)")
    parser.add_argument("--entities", type=int, default=50, help="distinct entities (default 50)")
    parser.add_argument("--plot", default=None, help="write a PNG of CPU per event against events per window here")
    parser.add_argument(
        "--bare",
        choices=("stock", "driftloop"),
        default=None,
        help="in the worker's place, a faust agent that only acknowledges (faust's consumer or the feature worker's)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="driftloop-bench-fw-") as tmp:
        folder = Path(tmp)
        with broker(private_settings(folder)) as (bootstrap, broker_pid, which):
            prefix = f"bench-fw-{uuid.uuid4().hex[:6]}-"
            env = {
                "DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "DRIFTLOOP_KAFKA__TOPIC_PREFIX": prefix,
                "DRIFTLOOP_FEAST__DATA_DIR": str(folder / "feast"),
                "DRIFTLOOP_WORKERS__FAUST_DATA_DIR": str(folder / "faust"),
                "DRIFTLOOP_WORKERS__FEATURES_GROUP": f"{prefix}features",
                "DRIFTLOOP_WORKERS__FAUST_WEB_PORT": str(free_port()),
                "DRIFTLOOP_WORKERS__METRICS_PORT": "0",
            }
            os.environ.update(env)  # this process's settings, and the worker's
            settings = load_settings()
            group = settings.workers.features_group
            try:
                ensure_topics(settings)
                apply_repo(settings)
                log = (folder / "features.log").open("wb")
                worker = subprocess.Popen(
                    worker_command(settings, folder, args.bare), stdout=log, stderr=subprocess.STDOUT
                )
                rounds = []
                try:
                    groups = {"feature_worker": [worker.pid], "broker": procstat.tree(broker_pid)}
                    with KafkaProducer(settings) as producer:
                        produce(producer, backlog(settings, WARM_UP, args.entities, seed=1))
                        wait_for(lambda: group_caught_up(settings, group), 180, "the warm-up", [worker])
                        held = WARM_UP
                        for r in range(args.rounds):
                            records = backlog(settings, args.events, args.entities, seed=2 + r)
                            worker.send_signal(signal.SIGSTOP)
                            try:
                                produce(producer, records)
                            finally:
                                worker.send_signal(signal.SIGCONT)
                            before, began = procstat.sample(groups), time.monotonic()
                            wait_for(lambda: group_caught_up(settings, group), DRAIN_TIMEOUT_S, "the drain", [worker])
                            seconds = time.monotonic() - began
                            cpu = procstat.cpu_us_per_event(
                                before, procstat.sample(groups), args.events, procstat.CLOCK_TICKS
                            )
                            held += args.events
                            rounds.append(
                                {
                                    "events_per_window": round(held / args.entities),
                                    "events_per_s": round(args.events / seconds, 1),
                                    "cpu_us_per_event": {k: round(v, 1) for k, v in cpu.items() if v is not None},
                                }
                            )
                finally:
                    worker.send_signal(signal.SIGTERM)
                    try:
                        worker.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        worker.kill()
                        worker.wait()
                    if worker.returncode not in (0, -signal.SIGTERM):
                        print((folder / "features.log").read_text(errors="replace")[-3000:], file=sys.stderr)
            finally:
                delete_topics(settings, prefix)
    result = {
        "bench": "feature_worker",
        "worker": f"faust_{args.bare}" if args.bare else "feature_worker",
        "events": args.events,
        "entities": args.entities,
        "broker": which,
        "cpus": os.cpu_count(),
        "rounds": rounds,
    }
    print(json.dumps(result))
    if args.plot:
        plot(result, args.plot)


def worker_command(settings, folder: Path, bare: str | None) -> list[str]:
    """The feature worker's command line, or with ``bare`` the acknowledge-only faust agent's (``faust_floor.py``)."""
    if bare is None:
        return [sys.executable, "-m", "driftloop.cli", "workers", "run", "--role", "features"]
    floor = Path(__file__).with_name("faust_floor.py")
    events = settings.kafka.topics["events-v1"]
    return [
        *(sys.executable, str(floor), "--consumer", bare, "--broker", settings.kafka_bootstrap),
        *("--topic", settings.kafka.topic("events-v1"), "--group", settings.workers.features_group),
        *("--partitions", str(events.partitions), "--datadir", str(folder / "faust-bare")),
        *("--web-port", str(settings.workers.faust_web_port)),
    ]


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = result["rounds"]
    x = [r["events_per_window"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("feature_worker", "broker"):
        ax.plot(x, [r["cpu_us_per_event"].get(name) for r in rounds], marker="o", label=name.replace("_", " "))
    ax.set_xlabel("events per entity window at the end of the round")
    ax.set_ylabel("CPU µs per event")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{result['worker'].replace('_', ' ')} draining {result['events']:,}-event backlogs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
