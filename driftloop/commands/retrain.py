"""``driftloop retrain``: the retraining consumer."""

from __future__ import annotations

import json
import signal

import click

from driftloop.commands.context import CommandContext, pass_ctx
from driftloop.health import HealthServer


@click.command(name="retrain")
@pass_ctx
def retrain_command(ctx: CommandContext) -> None:
    """Consume drift events; retrain, publish a candidate, canary it, then promote or roll back."""
    from training.retrain import Retrainer

    settings = ctx.settings
    # A run can take minutes of training: the loop beats between runs, so liveness allows an hour.
    health = HealthServer(settings.retrain.metrics_port or 0, stale_after_s=3600)
    retrainer = Retrainer(
        settings, on_outcome=lambda outcome: click.echo(json.dumps(outcome.as_dict())), beat=health.beat
    )
    if settings.retrain.metrics_port:
        health.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: retrainer.stop())
    try:
        retrainer.run()
    finally:
        health.stop()
