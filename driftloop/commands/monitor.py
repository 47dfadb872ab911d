"""``driftloop monitor`` (the drift-monitoring worker) and ``driftloop drift report`` (one check now).

The monitoring library (Evidently, pandas: seconds to import) is imported when a command runs, not when the CLI loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from driftloop.commands.context import CommandContext, pass_ctx
from monitoring.exceptions import MonitoringError
from streams.exceptions import StreamsError


@click.command(name="monitor")
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve /metrics on this port (0: off). Default: monitoring.metrics_port.",
)
@pass_ctx
def monitor_command(ctx: CommandContext, metrics_port: int | None) -> None:
    """Watch predictions and labels for drift; publish drift events and alert on-call (Ctrl-C stops)."""
    from monitoring.worker import run_monitor

    settings = ctx.settings
    if metrics_port is not None:
        settings = settings.model_copy(
            update={"monitoring": settings.monitoring.model_copy(update={"metrics_port": metrics_port})}
        )
    try:
        run_monitor(settings)
    except (MonitoringError, StreamsError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(name="drift")
def drift_group() -> None:
    """Drift checks on demand."""


@drift_group.command(name="report")
@click.option("--model", default=None, help="Model name (default: triton.model_name).")
@click.option(
    "--version",
    "version",
    type=int,
    default=None,
    help="Compare with this version's reference (default: the champion on the models topic).",
)
@click.option("--window", type=int, default=None, help="Latest predictions to check (default: monitoring.window_size).")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder of the HTML report (default: monitoring.reports_dir).",
)
@click.option("--no-html", is_flag=True, help="Do not save the Evidently HTML report.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@pass_ctx
def report_command(
    ctx: CommandContext,
    model: str | None,
    version: int | None,
    window: int | None,
    out: Path | None,
    no_html: bool,
    as_json: bool,
) -> None:
    """Run one drift check of the latest predictions now; print it and save the Evidently HTML report."""
    from monitoring.monitor import result_summary
    from monitoring.ondemand import check_now

    try:
        outcome = check_now(ctx.settings, model, version, window, out, save_html=not no_html)
    except (MonitoringError, StreamsError) as exc:
        raise click.ClickException(str(exc)) from exc
    summary = result_summary(outcome.result, outcome.report_path)
    if as_json:
        click.echo(json.dumps(summary, default=str))
        return
    window_info = summary["window"]
    click.echo(
        f"{summary['model']} v{summary['version']}: window of {window_info['size']} predictions "
        f"({window_info['labelled']} labelled) vs {summary['reference_size']} reference rows"
    )
    for kind, k in summary["kinds"].items():
        verdict = {True: click.style("DRIFT", fg="red"), False: click.style("ok", fg="green"), None: "undecided"}
        metrics = ", ".join(f"{name}={value:.3g}" for name, value in k["metrics"].items())
        columns = f" [{', '.join(k['drifted_columns'])}]" if k["drifted_columns"] else ""
        click.echo(f"  {kind:<12} {verdict[k['detected']]:<9} {metrics}{columns}")
    for name, c in summary["columns"].items():
        mark = "*" if c["drifted"] else " "
        click.echo(f"    {mark} {name:<14} {c['method']:<14} score={c['score']:.4g} threshold={c['threshold']:.3g}")
    if summary["report_path"]:
        click.echo(f"report: {summary['report_path']}")
