"""Pipeline throughput and latency vs the raw model, measured in one run on the real local stack.

    .venv/bin/driftloop stack up
    .venv/bin/python bench/pipeline.py --encoder tiny   [--events 3000] [--plot bench-tiny.png]
    .venv/bin/python bench/pipeline.py --encoder minilm [--events 600]

1. Publishes a version of a benchmark model (``bench_<encoder>``; a short bootstrap training: quality does not matter
   here, the network's shape does) into the stack's Triton.
2. Raw: the same version in process (``Predictor.predict_proba``) at the workers' micro-batch size.
3. Saturation: ``--events`` events already on the topic, one inference worker process started; events/s from its
   first prediction to its last (produced → prediction consumed).
4. Fixed rate: events produced at half the saturation rate; end-to-end latency p50/p99 from the predictions.

Prints one JSON line; ``ratio`` = saturation throughput / raw throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import numpy as np

from features.store import apply_repo
from foundation.settings import Settings, load_settings
from streams import KafkaConsumer, KafkaProducer, ensure_topics
from streams.generator import produce, synthetic_records
from streams.schemas import Prediction


def publish_bench_version(settings: Settings, samples: int) -> int:
    from training.pipeline import train_version

    run = train_version(settings, bootstrap=True, samples=samples, promote_policy="always", progress=False)
    return run.version


def raw_throughput(settings: Settings, version: int, texts: list[str], batch: int) -> float:
    from training.repository import ModelRepository
    from training.servable.runtime import Predictor

    predictor = Predictor.load(ModelRepository(settings).version_dir(version))
    features = np.zeros((batch, 6), dtype=np.float32)
    predictor.predict_proba(texts[:batch], features)  # warm up
    started = time.perf_counter()
    done = 0
    for start in range(0, len(texts) - batch + 1, batch):
        predictor.predict_proba(texts[start : start + batch], features)
        done += batch
    return done / (time.perf_counter() - started)


def start_worker(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "driftloop.cli", "workers", "run", "--role", "inference"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def collect(settings: Settings, count: int, timeout_s: float) -> list[tuple[float, Prediction]]:
    """(arrival time, prediction) of ``count`` predictions."""
    seen: list[tuple[float, Prediction]] = []
    with KafkaConsumer(settings, f"bench-{uuid.uuid4().hex[:6]}", [settings.kafka.topic("predictions-v1")]) as consumer:
        deadline = time.monotonic() + timeout_s
        while len(seen) < count and time.monotonic() < deadline:
            for msg in consumer.consume_batch(500, 0.5):
                seen.append((time.time(), Prediction.model_validate_json(msg.value())))
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", choices=["tiny", "minilm"], default="tiny")
    parser.add_argument("--events", type=int, default=None, help="default: 3000 (tiny), 600 (minilm)")
    parser.add_argument("--plot", default=None, help="write a PNG of the latency distribution here")
    args = parser.parse_args()
    events = args.events or (3000 if args.encoder == "tiny" else 600)

    prefix = f"bench-{uuid.uuid4().hex[:6]}-"
    overrides = {
        "DRIFTLOOP_KAFKA__TOPIC_PREFIX": prefix,
        "DRIFTLOOP_TRITON__MODEL_NAME": f"bench_{args.encoder}",
        "DRIFTLOOP_TRAINING__ENCODER": args.encoder,
        "DRIFTLOOP_TRAINING__EPOCHS": "1",
        "DRIFTLOOP_WORKERS__INFERENCE_GROUP": f"{prefix}inference",
        "DRIFTLOOP_WORKERS__METRICS_PORT": "0",
    }
    os.environ.update(overrides)
    settings = load_settings()
    ensure_topics(settings)
    apply_repo(settings)
    version = publish_bench_version(settings, samples=200)
    batch = settings.workers.max_batch_size
    texts = [r[0].value.decode() for r in synthetic_records(settings, max(events, 4 * batch), seed=1, labels=False)]
    texts = [json.loads(t)["text"] for t in texts]
    raw = raw_throughput(settings, version, texts, batch)

    # Saturation: a backlog, then one worker drains it.
    with KafkaProducer(settings) as producer:
        produce(producer, synthetic_records(settings, events, seed=2, labels=False))
    worker = start_worker(dict(os.environ))
    try:
        arrivals = collect(settings, events, timeout_s=600)
        times = sorted(t for t, _ in arrivals)
        warm = min(len(times) // 10, 200)  # leave the worker's start-up out
        saturated = (len(times) - warm) / (times[-1] - times[warm]) if len(times) > warm + 1 else 0.0

        # Fixed rate at half the saturation throughput: latency.
        rate = max(1.0, saturated / 2)
        fixed_count = int(min(events, rate * 30))
        since = datetime.now(UTC)
        with KafkaProducer(settings) as producer:
            produce(producer, synthetic_records(settings, fixed_count, seed=3, labels=False), rate=rate)
        later = [p for _, p in collect(settings, events + fixed_count, timeout_s=300) if p.predicted_at >= since]
        latencies = np.array([p.timings_ms.end_to_end for p in later])
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)

    result = {
        "bench": "pipeline",
        "encoder": args.encoder,
        "model_version": version,
        "batch": batch,
        "events": events,
        "raw_seq_per_s": round(raw, 1),
        "pipeline_events_per_s": round(saturated, 1),
        "ratio": round(saturated / raw, 3) if raw else None,
        "fixed_rate_per_s": round(rate, 1),
        "fixed_rate_events": len(latencies),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1) if len(latencies) else None,
        "latency_ms_p99": round(float(np.percentile(latencies, 99)), 1) if len(latencies) else None,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))
    if args.plot and len(latencies):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.bar(["raw model", "pipeline"], [raw, saturated], color=["grey", "tab:blue"])
        left.set_ylabel("events / s")
        left.set_title(f"{args.encoder}: ratio {result['ratio']}")
        right.hist(latencies, bins=40)
        right.set_xlabel(f"end-to-end latency at {rate:.0f} ev/s (ms)")
        right.set_title(f"p50 {result['latency_ms_p50']} ms, p99 {result['latency_ms_p99']} ms")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
