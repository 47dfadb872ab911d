"""``driftloop produce``, ``driftloop tail`` and ``driftloop workers``."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import click
from tqdm import tqdm

from driftloop.commands.context import CommandContext, pass_ctx
from streams.client import KafkaConsumer, KafkaProducer
from streams.exceptions import StreamsError
from streams.generator import file_records, produce, synthetic_records
from streams.workers import ROLES, child_argv, run_worker, supervise

TAILABLE = {"predictions": "predictions-v1", "dlq": "dlq-v1", "drift": "drift-v1", "events": "events-v1",
            "labels": "labels-v1", "models": "models-v1"}  # fmt: skip


@click.command(name="produce")
@click.option("--count", "-n", default=1000, show_default=True, help="Synthetic events to send.")
@click.option("--rate", type=float, default=None, help="Events per second (default: as fast as possible).")
@click.option("--seed", default=0, show_default=True)
@click.option("--malformed-share", default=0.0, show_default=True, help="Share of deliberately broken events.")
@click.option("--drift-at", type=int, default=None, help="Index of the first drifted event (concept drift).")
@click.option("--labels/--no-labels", default=True, show_default=True, help="Also send ground truth to labels.")
@click.option("--file", "path", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Send the events of a JSONL or CSV file instead.")  # fmt: skip
@pass_ctx
def produce_command(ctx: CommandContext, count, rate, seed, malformed_share, drift_at, labels, path) -> None:
    """Produce events to the events topic: a seeded synthetic stream, or a file."""
    settings = ctx.settings
    batches = (
        file_records(settings, path)
        if path
        else synthetic_records(settings, count, seed, malformed_share, drift_at, labels)
    )
    try:
        with KafkaProducer(settings) as producer, tqdm(total=None if path else count, unit="ev", file=sys.stderr) as bar:
            sent = produce(producer, batches, rate=rate, progress=bar)
    except StreamsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"sent {sent} events to {settings.kafka.topic('events-v1')}")


@click.command(name="tail")
@click.argument("stream", type=click.Choice(sorted(TAILABLE)))
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON values, one per line.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record instead of the newest.")
@click.option("--max", "max_records", type=int, default=None, help="Stop after this many records.")
@pass_ctx
def tail_command(ctx: CommandContext, stream: str, as_json: bool, from_beginning: bool, max_records: int | None) -> None:
    """Follow a topic (Ctrl-C stops). Reads with a throwaway group and commits nothing."""
    settings = ctx.settings
    topic = settings.kafka.topic(TAILABLE[stream])
    consumer = KafkaConsumer(settings, f"driftloop-tail-{uuid.uuid4().hex[:8]}", [topic],
                             {"auto.offset.reset": "earliest" if from_beginning else "latest"})  # fmt: skip
    seen = 0
    try:
        while max_records is None or seen < max_records:
            for msg in consumer.consume_batch(max_records=100, timeout_s=1.0):
                click.echo(msg.value().decode("utf-8", "replace") if as_json else _pretty(stream, msg.value()))
                seen += 1
                if max_records is not None and seen >= max_records:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


def _pretty(stream: str, value: bytes | None) -> str:
    try:
        data = json.loads(value or b"null")
    except ValueError:
        return repr(value)
    if stream == "predictions":
        top = max(data["scores"].values())
        return (f"{data['predicted_at'][11:23]} {data['entity_id']:<12} {data['label']:<9} {top:.2f} "
                f"v{data['model']['version']} {data['timings_ms']['end_to_end']:.0f}ms  {data['event_id']}")  # fmt: skip
    if stream == "dlq":
        src = data["source"]
        return f"{data['failed_at'][11:23]} {data['stage']:<9} {src['topic']}[{src['partition']}]@{src['offset']}: {data['error']}"
    return json.dumps(data)


@click.group(name="workers", invoke_without_command=True)
@click.option("--replicas", default=1, show_default=True, help="Processes per role, in one consumer group.")
@click.option("--role", "roles", multiple=True, type=click.Choice(ROLES), help="Only these roles (default: all).")
@click.pass_context
def workers_group(click_ctx: click.Context, replicas: int, roles: tuple[str, ...]) -> None:
    """Start the stream workers (feature worker and inference worker) and keep them running."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: CommandContext = click_ctx.obj
    ctx.settings  # noqa: B018 - validate the settings before starting anything
    sys.exit(supervise(child_argv(ctx.config and str(ctx.config)), roles or ROLES, replicas))


@workers_group.command(name="run")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--replica", default=0, show_default=True)
@pass_ctx
def run_command(ctx: CommandContext, role: str, replica: int) -> None:
    """Run one worker in this process (what `driftloop workers` starts per replica)."""
    run_worker(ctx.settings, role, replica)
