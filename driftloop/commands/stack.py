"""``driftloop stack up | down | status | logs``."""

from __future__ import annotations

import json
import sys
import time

import click

from driftloop import stack
from driftloop.commands.context import CommandContext, pass_ctx
from driftloop.stack.exceptions import StackError


def _components(only: str | None) -> tuple[str, ...]:
    if not only:
        return stack.COMPONENTS
    names = tuple(n.strip() for n in only.split(",") if n.strip())
    unknown = set(names) - set(stack.COMPONENTS)
    if unknown:
        raise click.BadParameter(f"unknown component(s) {sorted(unknown)}; choose from {stack.COMPONENTS}")
    return names


_only = click.option("--only", default=None, help="Comma-separated subset of: kafka,triton,feast.")


@click.group(name="stack")
def stack_group() -> None:
    """The local stack: Kafka broker, Triton server, Feast store."""


@stack_group.command()
@_only
@pass_ctx
def up(ctx: CommandContext, only: str | None) -> None:
    """Start every component (reusing running ones) and wait until each is ready."""
    started = time.monotonic()
    try:
        stack.up(ctx.settings, _components(only), report=click.echo)
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"stack ready in {time.monotonic() - started:.1f}s (run folder {ctx.settings.stack.run_dir})")


@stack_group.command()
@_only
@pass_ctx
def down(ctx: CommandContext, only: str | None) -> None:
    """Stop the local servers by PID (SIGTERM, then SIGKILL)."""
    stopped = stack.down(ctx.settings, _components(only))
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@stack_group.command()
@_only
@click.option("--json", "as_json", is_flag=True, help="One JSON object per component.")
@pass_ctx
def status(ctx: CommandContext, only: str | None, as_json: bool) -> None:
    """Health of each component; exits 1 when one is unhealthy."""
    report = stack.status(ctx.settings, _components(only))
    for item in report:
        if as_json:
            click.echo(json.dumps(item.as_dict()))
        else:
            mark = click.style("healthy", fg="green") if item.healthy else click.style("DOWN", fg="red")
            pid = f" pid {item.pid}" if item.pid else ""
            click.echo(f"{item.name:<7} {mark:<9} {item.mode}{pid}: {item.detail}")
    if not all(item.healthy for item in report):
        sys.exit(1)


@stack_group.command()
@click.argument("component", type=click.Choice(["kafka", "triton"]))
@click.option("-n", "--lines", default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
@pass_ctx
def logs(ctx: CommandContext, component: str, lines: int, follow: bool) -> None:
    """Show a server's log."""
    proc = stack.logs(ctx.settings, component)
    if not proc.log_file.exists():
        raise click.ClickException(f"no log yet at {proc.log_file}")
    with proc.log_file.open(errors="replace") as fh:
        for line in fh.readlines()[-lines:]:
            click.echo(line, nl=False)
        while follow:
            line = fh.readline()
            if line:
                click.echo(line, nl=False)
            else:
                time.sleep(0.3)


@stack_group.command("lock-kafka")
@pass_ctx
def lock_kafka(ctx: CommandContext) -> None:
    """Pin the broker's jars (after changing the Kafka version or its POM): needs Maven, once, on one machine."""
    from driftloop.stack import kafka, kafka_jars

    version = ctx.settings.stack.kafka_version
    out = kafka_jars.lock_path(kafka.KAFKA_DEPLOY, version)
    work_dir = ctx.settings.stack.cache_dir / f"kafka-{version}-lock"
    try:
        count = kafka_jars.write_lock(kafka.KAFKA_DEPLOY / "pom.xml", version, out, work_dir)
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{out}: {count} jars")


@stack_group.command("acls")
@click.option("--apply", "apply_", is_flag=True, help="Create them through the configured (admin) Kafka client.")
@pass_ctx
def acls(ctx: CommandContext, apply_: bool) -> None:
    """The Kafka ACLs of each role's identity, for the configured topics and groups (print, or --apply)."""
    from confluent_kafka.admin import AdminClient

    from driftloop.stack import kafka, kafka_roles
    from streams.client import client_config

    grants = kafka_roles.all_grants(ctx.settings)
    for grant in grants:
        click.echo(grant.line())
    if apply_:
        kafka.apply_acls(AdminClient(client_config(ctx.settings)), grants)
        click.echo(f"applied {len(grants)} ACLs to {ctx.settings.kafka_bootstrap}")
