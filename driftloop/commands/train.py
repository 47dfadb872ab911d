"""``driftloop train [--bootstrap]``: train, evaluate, publish (and maybe promote) a new model version."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from driftloop.commands.context import CommandContext, pass_ctx


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time (e.g. 2026-11-27T10:00:00Z)") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.command(name="train")
@click.option(
    "--bootstrap",
    is_flag=True,
    help="Train on the seeded synthetic generator instead of labelled events (the first version).",
)
@click.option("--since", default=None, help="Start of the events' window, ISO 8601 (default: now - window_days).")
@click.option("--until", default=None, help="End of the events' window, ISO 8601 (default: now).")
@click.option("--trigger-id", default=None, help="What caused this run (a drift alert id), kept in the lineage.")
@click.option(
    "--promote",
    "promote_policy",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "if-better", "always", "never"]),
    help="auto: only when there is no champion; if-better: also when it beats the champion's macro-F1.",
)
@click.option(
    "--encoder",
    type=click.Choice(["minilm", "tiny"]),
    default=None,
    help="Override settings.training.encoder (for a fresh start; a retrain warm-starts from the champion).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override settings.training.epochs.")
@click.option(
    "--samples",
    type=click.IntRange(min=10),
    default=None,
    help="Size of the bootstrap set (default settings.training.bootstrap_samples).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@pass_ctx
def train_command(
    ctx: CommandContext,
    bootstrap: bool,
    since: str | None,
    until: str | None,
    trigger_id: str | None,
    promote_policy: str,
    encoder: str | None,
    epochs: int | None,
    samples: int | None,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Train a new version, publish it to Triton as candidate, and promote it per --promote."""
    from training import DataWindow, TrainingError, train_version  # torch & co. load only for this command
    from training.exceptions import VersionRejected

    settings = ctx.settings
    overrides = {k: v for k, v in {"encoder": encoder, "epochs": epochs}.items() if v is not None}
    if overrides:
        settings = settings.model_copy(update={"training": settings.training.model_copy(update=overrides)})
    window = None
    if since or until:
        end = _when(until) or datetime.now(UTC)
        start = _when(since) or DataWindow.last(settings.training.window_days, end).start
        try:
            window = DataWindow(start, end)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    try:
        run = train_version(
            settings,
            bootstrap=bootstrap,
            window=window,
            trigger_id=trigger_id,
            promote_policy=promote_policy,  # type: ignore[arg-type] - click.Choice checked it
            samples=samples,
            progress=not no_progress,
        )
    except VersionRejected as exc:
        raise click.ClickException(f"{exc} - the champion keeps serving") from exc
    except (TrainingError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc

    summary = {
        "model": run.metadata.model,
        "version": run.version,
        "path": str(run.publication.path),
        "parent_version": run.metadata.parent_version,
        "metrics": run.metrics.model_dump(),
        "champion_metrics": run.metadata.champion_metrics,
        "state": run.state.model_dump(mode="json"),
        "promoted": run.promoted,
        "seconds": round(run.seconds, 1),
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    m = run.metrics
    click.echo(f"{run.metadata.model} version {run.version} published in {run.seconds:.0f}s: {run.publication.path}")
    click.echo(
        f"  holdout ({m.samples} events): accuracy {m.accuracy:.3f}, macro-F1 {m.macro_f1:.3f}, "
        f"log loss {m.log_loss:.3f}"
    )
    for label, c in m.per_class.items():
        click.echo(f"    {label:<12} precision {c.precision:.3f} recall {c.recall:.3f} f1 {c.f1:.3f} (n={c.support})")
    if run.champion_metrics:
        champion = run.champion_metrics
        click.echo(
            f"  champion v{run.metadata.parent_version} on the same holdout: "
            f"accuracy {champion.accuracy:.3f}, macro-F1 {champion.macro_f1:.3f}"
        )
    state = run.state
    click.echo(
        f"  {'promoted to champion' if run.promoted else 'candidate'}; champion {state.champion}, "
        f"candidate {state.candidate}, previous champion {state.previous_champion}"
    )
