"""``driftloop produce``, ``driftloop tail`` and ``driftloop workers``."""

from __future__ import annotations

import base64
import json
import math
import secrets
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import click
from confluent_kafka import Message
from pydantic import ValidationError
from tqdm import tqdm

from driftloop.commands.context import CommandContext, pass_ctx
from streams.client import KafkaConsumer, KafkaProducer
from streams.exceptions import StreamsError
from streams.generator import LabelSchedule, dated_as_sent, file_records, produce, synthetic_records
from streams.schemas import (
    DeadLetter,
    InvalidRecord,
    Prediction,
    parse_drift_event,
    parse_event,
    parse_label,
    parse_model_state,
    parse_prediction,
)
from streams.workers import ROLES, child_argv, run_worker, supervise

TAILABLE = {
    "predictions": "predictions-v1",
    "dlq": "dlq-v1",
    "drift": "drift-v1",
    "events": "events-v1",
    "labels": "labels-v1",
    "models": "models-v1",
}
PREVIEW_CHARS = 300  # of a record that breaks its contract, at most this much of the value is printed


@click.command(name="produce")
@click.option("--count", "-n", default=1000, show_default=True, help="Synthetic events to send.")
@click.option("--rate", type=float, default=None, help="Events per second (default: as fast as possible).")
@click.option("--seed", default=0, show_default=True, help="Seed of the traffic (texts, entities, labels).")
@click.option(
    "--id-seed",
    type=int,
    default=None,
    help="Seed of the event ids [default: a fresh one per run, so that sending the same traffic again never "
    "reuses an event id; give one to repeat the same ids].",
)
@click.option("--malformed-share", default=0.0, show_default=True, help="Share of deliberately broken events.")
@click.option("--drift-at", type=int, default=None, help="Index of the first drifted event (concept drift).")
@click.option("--labels/--no-labels", default=True, show_default=True, help="Also send ground truth to labels.")
@click.option(
    "--label-delay-s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds from an event to its label; labels still held when the events end go out once due.",
)
@click.option(
    "--label-share",
    type=click.FloatRange(0, 1),
    default=1.0,
    show_default=True,
    help="Share of the events that get a label, drawn at random (seeded).",
)
@click.option(
    "--file",
    "path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Send the events of a JSONL or CSV file instead.",
)
@pass_ctx
def produce_command(
    ctx: CommandContext,
    count,
    rate,
    seed,
    id_seed,
    malformed_share,
    drift_at,
    labels,
    label_delay_s,
    label_share,
    path,
) -> None:
    """Produce events to the events topic: a seeded synthetic stream, or a file."""
    settings = ctx.settings
    batches = (
        file_records(settings, path)
        if path
        else synthetic_records(
            settings,
            count,
            seed,
            malformed_share,
            drift_at,
            labels,
            id_seed=secrets.randbits(64) if id_seed is None else id_seed,
            **dated_as_sent(count, rate),
        )
    )
    schedule = None
    if labels and not path and (label_delay_s > 0 or label_share < 1):
        schedule = LabelSchedule(settings.kafka.topic("labels-v1"), label_delay_s, label_share, seed=seed)
    try:
        with (
            KafkaProducer(settings) as producer,
            tqdm(total=None if path else count, unit="ev", file=sys.stderr) as bar,
        ):
            sent = produce(producer, batches, rate=rate, progress=bar, labels=schedule)
    except StreamsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"sent {sent} events to {settings.kafka.topic('events-v1')}")
    if schedule is not None:
        click.echo(
            f"left {schedule.dropped} events unlabelled (label share {label_share:g}), "
            f"labels {label_delay_s:g} s after their event"
        )


@click.command(name="tail")
@click.argument("stream", type=click.Choice(sorted(TAILABLE)))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the raw JSON values, one per line (a record that is not JSON: a note on stderr).",
)
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record instead of the newest.")
@click.option("--max", "max_records", type=int, default=None, help="Stop after this many records.")
@pass_ctx
def tail_command(
    ctx: CommandContext, stream: str, as_json: bool, from_beginning: bool, max_records: int | None
) -> None:
    """Follow a topic (Ctrl-C stops). Reads with a throwaway group and commits nothing.

    Any record prints as one line: one that breaks its topic's contract (not UTF-8, not JSON, a tombstone, a field
    out of range) as ``! <topic>[<partition>]@<offset> <reason> | <value preview>``, binary values in base64.
    """
    settings = ctx.settings
    topic = settings.kafka.topic(TAILABLE[stream])
    consumer = KafkaConsumer(
        settings,
        f"driftloop-tail-{uuid.uuid4().hex[:8]}",
        [topic],
        {"auto.offset.reset": "earliest" if from_beginning else "latest"},
    )
    seen = 0
    try:
        while max_records is None or seen < max_records:
            for msg in consumer.consume_batch(max_records=100, timeout_s=1.0):
                _echo(stream, msg, as_json)
                seen += 1
                if max_records is not None and seen >= max_records:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


def _echo(stream: str, msg: Message, as_json: bool) -> None:
    """Print one record; a note for one that cannot be shown as asked (on stderr with ``--json``)."""
    where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
    if as_json:
        line, note = raw_json_line(msg.value())
        if line is not None:
            click.echo(line)
        else:
            click.echo(f"! {where} {note} | {preview(msg.value())}", err=True)
        return
    click.echo(pretty_line(stream, msg.value(), where))


def raw_json_line(value: bytes | None) -> tuple[str | None, str]:
    """``(the value as one line of JSON, "")``, or ``(None, why not)``; never raises."""
    if value is None:
        return None, "tombstone (no value)"
    try:
        text = value.decode("utf-8")
        data = json.loads(text, parse_constant=_not_json)
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 ({exc.reason} at byte {exc.start})"
    except (ValueError, RecursionError) as exc:
        return None, f"not JSON ({str(exc)[:100]})"
    if "\n" in text or "\r" in text:  # one record, one line
        try:
            return json.dumps(data, ensure_ascii=False), ""
        except (ValueError, RecursionError) as exc:
            return None, f"cannot be printed as one line of JSON ({type(exc).__name__})"
    return text, ""


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def pretty_line(stream: str, value: bytes | None, where: str = "") -> str:
    """One human line for a record of ``stream``: a summary of a valid record, a note for any other; never raises."""
    try:
        record = _PARSERS[stream](value)
        return _FORMATS.get(stream, _compact)(record, value)
    except InvalidRecord as exc:
        reason = exc.reason
    except Exception as exc:  # noqa: BLE001 - no record may stop the tail
        reason = f"unexpected {type(exc).__name__}: {str(exc)[:200]}"
    return f"! {where + ' ' if where else ''}invalid {stream} record: {reason} | {preview(value)}"


def preview(value: bytes | None) -> str:
    """At most ``PREVIEW_CHARS`` of a value: its text (escaped) when UTF-8, else base64; with its size when cut."""
    if value is None:
        return "(tombstone)"
    size = f" ({len(value)} bytes)" if len(value) > PREVIEW_CHARS else ""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return f"base64:{base64.b64encode(value[:PREVIEW_CHARS]).decode()[:PREVIEW_CHARS]}{size}"
    shown = json.dumps(text[:PREVIEW_CHARS], ensure_ascii=True)[1:-1]
    return shown + ("..." + size if size else "")


def _parse_dead_letter(value: bytes | None) -> DeadLetter:
    if value is None:
        raise InvalidRecord("empty value (tombstone)")
    try:
        return DeadLetter.model_validate_json(value)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}"[:200] for e in exc.errors()[:3])
        raise InvalidRecord(f"not a dead letter: {reasons}") from None


def _prediction(p: Prediction, _value: bytes | None) -> str:
    top = max(p.scores.values(), default=math.nan)
    return (
        f"{p.predicted_at.isoformat()[11:23]} {p.entity_id[:40]:<12} {p.label[:40]:<9} {top:.2f} "
        f"v{p.model.version} {p.timings_ms.end_to_end:.0f}ms  {p.event_id}"
    )


def _dead_letter(d: DeadLetter, _value: bytes | None) -> str:
    src = d.source
    return f"{d.failed_at.isoformat()[11:23]} {d.stage[:20]:<9} {src.topic}[{src.partition}]@{src.offset}: {d.error}"


def _compact(_record: object, value: bytes | None) -> str:
    """The valid record's own JSON on one line."""
    return json.dumps(json.loads(value or b"null"), ensure_ascii=False)


_PARSERS: dict[str, Callable[[bytes | None], object]] = {
    "events": parse_event,
    "labels": parse_label,
    "predictions": parse_prediction,
    "drift": parse_drift_event,
    "models": parse_model_state,
    "dlq": _parse_dead_letter,
}
_FORMATS: dict[str, Callable[[object, bytes | None], str]] = {"predictions": _prediction, "dlq": _dead_letter}


@click.group(name="workers", invoke_without_command=True)
@click.option("--replicas", default=1, show_default=True, help="Processes per role, in one consumer group.")
@click.option("--role", "roles", multiple=True, type=click.Choice(ROLES), help="Only these roles (default: all).")
@click.pass_context
def workers_group(click_ctx: click.Context, replicas: int, roles: tuple[str, ...]) -> None:
    """Start the stream workers (feature worker and inference worker) and keep them running."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: CommandContext = click_ctx.obj
    grace_s = ctx.settings.workers.shutdown_grace_s + 10  # a child past its own deadline is SIGKILLed
    sys.exit(supervise(child_argv(ctx.config and str(ctx.config)), roles or ROLES, replicas, grace_s=grace_s))


@workers_group.command(name="run")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--replica", default=0, show_default=True)
@pass_ctx
def run_command(ctx: CommandContext, role: str, replica: int) -> None:
    """Run one worker in this process (what `driftloop workers` starts per replica)."""
    run_worker(ctx.settings, role, replica)
