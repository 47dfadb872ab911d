"""``driftloop models list | promote | rollback | withdraw``: the versions in the repository and their roles."""

from __future__ import annotations

import json
from typing import Any

import click

from driftloop.commands.context import CommandContext, pass_ctx


@click.group(name="models")
def models_group() -> None:
    """Model versions: what is on disk, what Triton serves, who is champion (the models topic)."""


@models_group.command(name="list")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='One JSON object per version ("kind": "version"), then one per recent run ("kind": "run").',
)
@click.option(
    "--runs",
    "run_count",
    type=int,
    default=5,
    show_default=True,
    help="How many of the retraining consumer's last runs to show.",
)
@pass_ctx
def list_versions(ctx: CommandContext, as_json: bool, run_count: int) -> None:
    """Every version in the repository, newest first, with its role, Triton state and holdout scores; then the
    retraining consumer's last runs and how they ended (promoted, rolled back, rejected, failed, dropped) or where
    they are (waiting_for_labels, running)."""
    from training.exceptions import TrainingError
    from training.publish import TritonControl
    from training.registry import read_state
    from training.repository import ModelRepository

    settings = ctx.settings
    repo = ModelRepository(settings)
    try:
        state = read_state(settings)
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from exc
    triton_states: dict[int, str] | None
    try:
        control = TritonControl(settings)
        triton_states = control.states(repo.name)
        control.close()
    except Exception:  # noqa: BLE001 - an unreachable server is shown as such, the list still prints
        triton_states = None
    rows = [_row(repo, version, state, triton_states) for version in reversed(repo.versions())]
    runs = [_run_row(run) for run in repo.runs(run_count)] if run_count > 0 else []
    if as_json:
        for row in rows + runs:
            click.echo(json.dumps(row))
        return
    click.echo(
        f"{repo.name} in {repo.model_dir}: champion {state.champion}, candidate {state.candidate}, "
        f"previous champion {state.previous_champion}"
        + (f" (last: {state.event} at {state.at:%Y-%m-%d %H:%M:%S}: {state.reason[:80]})" if state.event else "")
    )
    if triton_states is None:
        click.echo(f"  (Triton at {settings.triton_grpc} is not reachable)")
    if not rows:
        click.echo("  no versions yet: `driftloop train --bootstrap` makes the first")
    for row in rows:
        f1 = f"{row['macro_f1']:.3f}" if row["macro_f1"] is not None else "-"
        click.echo(
            f"  v{row['version']:<4} {row['role'] or '':<17} {row['triton'] or '-':<11} macro-F1 {f1:<6} "
            f"parent {row['parent_version'] if row['parent_version'] is not None else '-':<4} "
            f"trigger {row['trigger_id'] or '-'}  {row['created_at'] or ''}"
        )
    if runs:
        click.echo("last runs of the retraining consumer:")
    for run in runs:
        version = f"v{run['version']}" if run["version"] is not None else "-"
        click.echo(
            f"  {run['started_at'] or '':<32} {run['status'] or '?':<18} {version:<5} trigger {run['run']}  "
            f"{(run['detail'] or '')[:160]}"
        )


def _row(repo: Any, version: int, state: Any, triton_states: dict[int, str] | None) -> dict[str, Any]:
    metadata = repo.metadata(version) or {}
    metrics = metadata.get("metrics") or {}
    return {
        "kind": "version",
        "version": version,
        "role": state.role(version),
        "triton": triton_states.get(version) if triton_states is not None else None,
        "macro_f1": metrics.get("macro_f1"),
        "accuracy": metrics.get("accuracy"),
        "parent_version": metadata.get("parent_version"),
        "trigger_id": metadata.get("trigger_id"),
        "created_at": metadata.get("created_at"),
        "data_window": metadata.get("data_window"),
        "path": str(repo.version_dir(version)),
    }


def _run_row(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "run",
        "run": run.get("run"),
        "status": run.get("status"),
        "version": run.get("version"),
        "detail": run.get("detail"),
        "attempt": run.get("attempt"),
        "folded": run.get("folded") or [],
        "started_at": run.get("started_at"),
        "ended_at": run.get("ended_at"),
        "verdict": run.get("verdict"),
        "onset": run.get("onset"),
        "labels": run.get("labels"),  # {"labelled", "needed"}: post-onset labels counted while the run waited
    }


@models_group.command()
@click.argument("version", type=int, required=False)
@click.option("--reason", default="", help="Why (kept in the models topic record).")
@pass_ctx
def promote(ctx: CommandContext, version: int | None, reason: str) -> None:
    """Make VERSION (default: the candidate) the champion; the old champion stays loaded for a rollback."""
    from training.exceptions import TrainingError
    from training.publish import promote as promote_version

    try:
        state = promote_version(ctx.settings, version, reason or "promoted by hand")
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"{state.model}: champion {state.champion} (previous {state.previous_champion}), candidate {state.candidate}"
    )


@models_group.command()
@click.argument("version", type=int, required=False)
@click.option("--reason", default="", help="Why (kept in the models topic record).")
@pass_ctx
def withdraw(ctx: CommandContext, version: int | None, reason: str) -> None:
    """Drop the candidate (default: the current one) without touching the champion."""
    from training.exceptions import TrainingError
    from training.publish import withdraw as withdraw_candidate

    try:
        state = withdraw_candidate(ctx.settings, version, reason or "withdrawn by hand")
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{state.model}: candidate withdrawn ({state.reason}); champion {state.champion}")


@models_group.command()
@click.option("--to", "to", type=int, default=None, help="The version to go back to (default: previous champion).")
@click.option("--reason", default="", help="Why (kept in the models topic record).")
@pass_ctx
def rollback(ctx: CommandContext, to: int | None, reason: str) -> None:
    """Make the previous champion (or --to VERSION) the champion again."""
    from training.exceptions import TrainingError
    from training.publish import rollback as rollback_version

    try:
        state = rollback_version(ctx.settings, to, reason or "rolled back by hand")
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{state.model}: champion {state.champion} (rolled back), candidate {state.candidate}")
