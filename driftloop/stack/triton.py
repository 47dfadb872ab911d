"""The local Triton server: the real ``tritonserver`` binary, serving ``triton_repo/`` in explicit mode.

Where the binary comes from, first match wins: ``stack.tritonserver`` in the settings, a ``tritonserver`` on PATH
(NVIDIA's container), the one shipped in the ``nvidia-pytriton`` wheel of the serving environment. Models run in the
serving environment (numpy < 2; the bundled python backend breaks with numpy 2, see DESIGN.md): its ``bin`` goes
first on PATH because the backend stub starts the first ``python3`` it finds.

Several servers can serve the one repository, as Triton replicas do in production: replica ``n`` runs from its own
folder (``<run_dir>/triton-<n>``; replica 0 is the stack's server, ``<run_dir>/triton``) on the ports of its settings
(:func:`replica_settings`: the stack's plus ``n * REPLICA_PORT_STEP``), and a publish loads versions on each
(``triton.replicas``, see :mod:`training.publish`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from driftloop.stack.exceptions import ComponentNotFound
from driftloop.stack.process import ServerProcess
from foundation.settings import Settings
from streams.triton_client import ADMIN_KEY_HEADER, TritonAdmin, server_ready

log = logging.getLogger(__name__)

REPLICA_PORT_STEP = 10  # replica n listens on the stack's Triton ports + n * this (8010, 8011, 8012 for replica 1)


def server(settings: Settings, replica: int = 0) -> ServerProcess:
    """The server process of Triton replica ``replica`` (0: the stack's own)."""
    name = "triton" if replica == 0 else f"triton-{replica}"
    return ServerProcess(name, settings.stack.run_dir / name)


def replica_settings(settings: Settings, replica: int) -> Settings:
    """The settings of local replica ``replica`` on the same model repository: the stack's Triton ports shifted by
    ``replica * REPLICA_PORT_STEP``, and its endpoints (``triton_http``, ``triton_grpc``) on them. 0: ``settings``."""
    if replica == 0:
        return settings
    shift = replica * REPLICA_PORT_STEP
    stack = settings.stack
    ports = {
        "triton_http_port": stack.triton_http_port + shift,
        "triton_grpc_port": stack.triton_grpc_port + shift,
        "triton_metrics_port": stack.triton_metrics_port + shift,
    }
    return settings.model_copy(
        update={
            "stack": stack.model_copy(update=ports),
            "triton": settings.triton.model_copy(update={"url": None, "grpc_url": None}),
        }
    )


@dataclass(frozen=True)
class TritonInstall:
    """A runnable server: the binary, its backend folder (None: the binary's default) and extra library dirs."""

    binary: Path
    backend_dir: Path | None
    library_dirs: tuple[Path, ...]


def serving_python(settings: Settings) -> Path:
    python = settings.stack.serving_venv.resolve() / "bin" / "python3"
    if not python.exists():
        raise ComponentNotFound(
            f"the serving environment {settings.stack.serving_venv} is missing: `make setup` creates it"
        )
    return python


def python_info(python: Path) -> dict[str, str]:
    """``version`` (``"3.11"``), ``libdir`` (where its libpython is) and ``site`` (its site-packages) of ``python``."""
    code = (
        "import json, sys, sysconfig, site;"
        "print(json.dumps({'version': '%d.%d' % sys.version_info[:2], 'libdir': sysconfig.get_config_var('LIBDIR'),"
        " 'site': site.getsitepackages()[0]}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)  # noqa: S603
    return json.loads(out.stdout)


def locate(settings: Settings) -> TritonInstall:
    """Find a tritonserver and prepare its python backend folder in the run folder.

    Raises:
        ComponentNotFound: no binary anywhere, or the wheel lacks a stub for the serving Python.
    """
    if settings.stack.tritonserver:
        return TritonInstall(settings.stack.tritonserver, None, ())
    if found := shutil.which("tritonserver"):
        return TritonInstall(Path(found), None, ())

    info = python_info(serving_python(settings))
    wheel = Path(info["site"]) / "pytriton" / "tritonserver"
    if not (wheel / "bin" / "tritonserver").exists():
        raise ComponentNotFound(
            f"no tritonserver: not on PATH and not in {wheel} (the nvidia-pytriton wheel); `make setup` installs it"
        )
    stub = wheel / "python_backend_stubs" / info["version"] / "triton_python_backend_stub"
    if not stub.exists():
        raise ComponentNotFound(f"the nvidia-pytriton wheel has no python backend stub for Python {info['version']}")
    backends = server(settings).run_dir / "backends"
    python_backend = backends / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    for source in [*sorted((wheel / "backends" / "python").iterdir()), stub]:
        target = python_backend / source.name
        if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
            shutil.copy2(source, target)
    libs = Path(info["site"]) / "nvidia_pytriton.libs"
    return TritonInstall(wheel / "bin" / "tritonserver", backends.resolve(), (libs, Path(info["libdir"])))


def has_gpu() -> bool:
    return Path("/dev/nvidia0").exists()


def argv_and_env(settings: Settings, install: TritonInstall, load: bool = True) -> tuple[list[str], dict[str, str]]:
    """The server's command line and environment; ``load=False``: it starts with no model loaded (explicit mode)."""
    stack = settings.stack
    repository = settings.triton.model_repository.resolve()
    argv = [
        str(install.binary),
        f"--model-repository={repository}",
        "--model-control-mode=explicit",
        "--strict-readiness=false",
        "--disable-auto-complete-config",
        f"--http-address={stack.host}",
        f"--http-port={stack.triton_http_port}",
        f"--grpc-address={stack.host}",
        f"--grpc-port={stack.triton_grpc_port}",
        f"--metrics-address={stack.host}",
        f"--metrics-port={stack.triton_metrics_port}",
        "--log-verbose=0",
        # Idle keep-alive clients would otherwise hold a SIGTERM for the default 30 s.
        "--exit-timeout-secs=5",
    ]
    if install.backend_dir:
        argv.append(f"--backend-directory={install.backend_dir}")
    if not has_gpu():
        argv.append("--pinned-memory-pool-byte-size=0")
    if settings.triton.admin_key:  # load/unload/index only with the key (ADMIN_KEY_HEADER), on both protocols
        restricted = f"model-repository:{ADMIN_KEY_HEADER}={settings.triton.admin_key.get_secret_value()}"
        argv += [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]
    # Explicit mode loads nothing by itself: load every model that has a config.
    if load:
        argv += [f"--load-model={p.parent.name}" for p in sorted(repository.glob("*/config.pbtxt"))]

    env = dict(os.environ)
    if install.library_dirs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [*map(str, install.library_dirs), *filter(None, [env.get("LD_LIBRARY_PATH")])]
        )
    if settings.stack.serving_venv.exists():
        env["PATH"] = f"{settings.stack.serving_venv.resolve() / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(settings.stack.serving_venv.resolve())
    env.pop("PYTHONPATH", None)
    env.setdefault("HF_HUB_OFFLINE", "1")
    # A __pycache__ written into a loaded version folder makes Triton reload that version on the next load request.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return argv, env


def start(settings: Settings, replica: int = 0, load: bool = True) -> int:
    """Start tritonserver on the model repository (created when missing); returns its PID. Does not wait.

    Args:
        settings: the server's ports (``stack.triton_*_port``) and repository; :func:`replica_settings` gives a
            replica's.
        replica: which server process (its run folder, PID and log file); 0 is the stack's own.
        load: load every model that has a ``config.pbtxt`` at start; False: nothing is loaded until asked (as a
            replica that a publisher, not the command line, brings to the served versions).
    """
    settings.triton.model_repository.mkdir(parents=True, exist_ok=True)
    argv, env = argv_and_env(settings, locate(settings), load=load)
    key = settings.triton.admin_key
    return server(settings, replica).start(argv, env=env, redact=[key.get_secret_value()] if key else [])


def is_ready(settings: Settings) -> bool:
    """Whether the server answers "ready" over gRPC and its HTTP endpoint takes connections (False when either cannot
    be reached: Triton opens its gRPC endpoint before its HTTP one)."""
    if not server_ready(settings):
        return False
    host, port = settings.triton_http.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2.0):
            return True
    except OSError:
        return False


def up(settings: Settings, replica: int = 0) -> list[str]:
    """Start the server (replica ``replica``, on the ports of ``settings``) unless it runs, wait until ready. Returns
    the models it serves."""
    proc = server(settings, replica)
    if proc.pid() is None:
        start(settings, replica)
    proc.wait_ready(lambda: is_ready(settings), settings.stack.ready_timeout_s, f"grpc://{settings.triton_grpc}")
    return loaded(settings)


def loaded(settings: Settings) -> list[str]:
    """``name:version`` of every model version the server has ready."""
    with TritonAdmin.of(settings) as admin:
        return admin.loaded()


def repository_index(settings: Settings) -> list[dict]:
    with TritonAdmin.of(settings) as admin:
        return admin.repository_index()


def describe(settings: Settings) -> str:
    """One line on the server's health: readiness and the models it has loaded.

    Raises:
        InferenceServerException: the server does not answer.
    """
    with TritonAdmin.of(settings) as admin:
        version = admin.metadata().get("version", "?")
        ready = admin.is_ready()
        models = admin.loaded()
    return (
        f"triton {version} at {settings.triton_grpc} ({'ready' if ready else 'NOT ready'}), "
        f"models loaded: {', '.join(models) or 'none'}"
    )
