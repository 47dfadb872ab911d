"""``driftloop retrain``: the retraining consumer."""

from __future__ import annotations

import json
import signal

import click

from driftloop.commands.context import CommandContext, pass_ctx
from foundation.health import HealthServer
from foundation.shutdown import exit_after


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

    def stop(*_: object) -> None:
        # A run may be training for minutes: it is cut at the grace period; its drift event is not committed, so
        # it is replayed, and an interrupted publish is finished or rolled back at the next start.
        exit_after(settings.workers.shutdown_grace_s, "the retraining consumer")
        retrainer.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        retrainer.run()
    finally:
        health.stop()
