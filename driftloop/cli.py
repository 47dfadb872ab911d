"""The ``driftloop`` command: one click group per noun; each command builds settings and calls library code."""

from __future__ import annotations

from pathlib import Path

import click

from driftloop.commands.context import CommandContext
from driftloop.commands.demo import demo_command
from driftloop.commands.models import models_group
from driftloop.commands.monitor import drift_group, monitor_command
from driftloop.commands.retrain import retrain_command
from driftloop.commands.stack import stack_group
from driftloop.commands.streams import produce_command, tail_command, workers_group
from driftloop.commands.train import train_command


@click.group()
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="DRIFTLOOP_CONFIG",
    help="TOML settings file (default: ./driftloop.toml when present).",
)
@click.option("--log-json/--no-log-json", default=None, help="Log one JSON object per line.")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR.")
@click.version_option(package_name="driftloop")
@click.pass_context
def main(ctx: click.Context, config: Path | None, log_json: bool | None, log_level: str | None) -> None:
    """driftloop: streaming inference and retraining on Kafka, Feast, Triton and Evidently."""
    ctx.obj = CommandContext(config, log_json, log_level)


COMMANDS = (
    stack_group,
    produce_command,
    tail_command,
    workers_group,
    train_command,
    models_group,
    monitor_command,
    drift_group,
    retrain_command,
    demo_command,
)
for command in COMMANDS:
    main.add_command(command)

if __name__ == "__main__":
    main()
