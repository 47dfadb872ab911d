"""``driftloop demo``: the closed loop on the local stack, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import click

from driftloop import stack
from driftloop.commands.context import CommandContext, pass_ctx


@click.command(name="demo")
@click.option("--rate", default=10.0, show_default=True, help="Events per second.")
@click.option("--drift-after", default=60.0, show_default=True, help="Seconds of clean traffic before the drift.")
@click.option("--timeout", default=600.0, show_default=True, help="Give up when no promotion came by then.")
@click.option("--after-promotion", default=30.0, show_default=True, help="Seconds of traffic after the promotion.")
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--label-delay-s",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds from an event to its label [default: demo.label_delay_s, 30].",
)
@click.option(
    "--label-share",
    type=click.FloatRange(0, 1),
    default=None,
    help="Share of the events that get a label [default: demo.label_share, 0.5].",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".stack/demo"),
    show_default=True,
    help="Where the summary, the plot and the workers' logs go.",
)
@pass_ctx
def demo_command(
    ctx: CommandContext, rate, drift_after, timeout, after_promotion, seed, label_delay_s, label_share, out: Path
) -> None:
    """Start the stack, bootstrap a version on clean traffic, stream events, inject a concept drift and let the loop
    recover."""
    from driftloop.demo import DemoPlan, run_loop, timeline_lines
    from driftloop.demo.fresh import fresh_run
    from training.pipeline import train_version

    stack.up(ctx.settings, report=click.echo)
    settings = fresh_run(ctx.settings, out)
    click.echo(f"this run's topics: {settings.kafka.topic_prefix}*, feature store: {settings.feast_dir}")
    # The run's models topic is new: its champion is a version that knows only the clean traffic, bootstrapped now
    # (the earlier runs' versions stay in the repository).
    click.echo(
        f"bootstrapping a version of {settings.triton.model_name} on clean traffic ({settings.training.encoder}) ..."
    )
    run = train_version(settings, bootstrap=True, promote_policy="always")
    click.echo(
        f"version {run.version} serving: holdout accuracy {run.metrics.accuracy:.1%}, "
        f"macro-F1 {run.metrics.macro_f1:.3f}, trained in {run.seconds:.0f}s"
    )
    plan = DemoPlan(
        rate=rate,
        drift_after_s=drift_after,
        timeout_s=timeout,
        after_promotion_s=after_promotion,
        seed=seed,
        label_delay_s=settings.demo.label_delay_s if label_delay_s is None else label_delay_s,
        label_share=settings.demo.label_share if label_share is None else label_share,
    )
    summary = run_loop(settings, plan, ctx.config, out, click.echo)
    click.echo("\ntimeline (seconds since the drift onset):")
    for line in timeline_lines(summary):
        click.echo(line)
    click.echo("\n" + json.dumps({k: v for k, v in summary.items() if k != "timeline"}, indent=2))
    click.echo(f"\nsummary: {out / 'summary.json'}  plot: {out / 'accuracy.png'}  logs: {out / 'logs'}")
    click.echo(
        f"this run's topics: DRIFTLOOP_KAFKA__TOPIC_PREFIX={settings.kafka.topic_prefix} driftloop tail predictions "
        "(or drift, models, dlq; driftloop models list)"
    )
    click.echo("the stack keeps running: `driftloop stack down` stops it")
