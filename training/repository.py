"""The model's folder in Triton's model repository: version folders, ``config.pbtxt`` and a publish lock.

Layout (``settings.triton.model_repository`` / ``settings.triton.model_name``)::

    classifier/
      config.pbtxt        the contract (inputs, outputs, batching) and the versions Triton serves
      .publish.lock       serialises publishers on this machine
      .last_version       the highest version number ever handed out (rejected ones included)
      .staging-<host>-<pid>-<id>/   a version being built (Triton ignores non-numeric folders)
      .publish-intent.json  a publish between Triton's load and the models-topic announcement (see training.publish)
      .runs.jsonl         the retraining consumer's last runs and how they ended (bounded)
      3/ 4/ 5/            complete versions: model.py, runtime.py, network.py, weights, graph, tokenizer,
                          metadata.json

``config.pbtxt`` serves exactly the versions with a role (champion, candidate, previous champion) through a
``specific`` version policy; other kept versions stay on disk for lineage and for a rollback ``--to`` them.
Changing the policy and loading the model loads and unloads versions without touching the ones that stay.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from foundation.settings import Settings
from foundation.supervisor import pid_alive
from training.exceptions import PublishError
from training.servable import runtime

MAX_BATCH_SIZE = 64
CONFIG_FILE = "config.pbtxt"
LOCK_FILE = ".publish.lock"
ISSUED_FILE = ".last_version"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
INTENT_FILE = ".publish-intent.json"
RUNS_FILE = ".runs.jsonl"
KEEP_RUNS = 200  # run records kept in RUNS_FILE
STALE_FOREIGN_STAGING_S = 24 * 3600  # a staging folder of another host is left alone for this long

log = logging.getLogger(__name__)

_VERSIONS = re.compile(r"version_policy\s*:\s*\{\s*specific\s*:\s*\{\s*versions\s*:\s*\[([^\]]*)\]")


def render_config(
    name: str,
    n_labels: int,
    versions: list[int],
    *,
    n_features: int = len(runtime.FEATURE_NAMES),
    instance_count: int = 2,
    max_queue_delay_us: int = 2000,
    cpu_threads: int = 1,
    cpu_engine: str = "auto",
) -> str:
    """The ``config.pbtxt`` of the classifier serving ``versions``.

    ``KIND_AUTO`` gives one instance group on each GPU when Triton has GPUs (the model then runs in fp16), else on
    the CPU; ``model.py`` reads the kind Triton chose, and runs a CPU instance with ``cpu_engine`` on ``cpu_threads``
    threads.
    """
    if not versions:
        raise ValueError("a config needs at least one version to serve")
    listed = ", ".join(str(v) for v in sorted(set(versions)))
    return f"""# Written by driftloop's training stage (training/repository.py); versions follow the models topic.
name: "{name}"
backend: "python"
max_batch_size: {MAX_BATCH_SIZE}
version_policy: {{ specific: {{ versions: [ {listed} ] }} }}
input [
  {{ name: "{runtime.TEXT_INPUT}" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "{runtime.FEATURES_INPUT}" data_type: TYPE_FP32 dims: [ {n_features} ] }}
]
output [
  {{ name: "{runtime.PROBS_OUTPUT}" data_type: TYPE_FP32 dims: [ {n_labels} ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}
instance_group [ {{ kind: KIND_AUTO count: {instance_count} }} ]
parameters [
  {{ key: "{runtime.CPU_THREADS_PARAMETER}" value: {{ string_value: "{cpu_threads}" }} }},
  {{ key: "{runtime.CPU_ENGINE_PARAMETER}" value: {{ string_value: "{cpu_engine}" }} }}
]
"""


def served_versions(config_text: str) -> list[int]:
    """The versions a ``config.pbtxt`` written by :func:`render_config` serves."""
    match = _VERSIONS.search(config_text)
    if not match:
        return []
    return sorted(int(v) for v in re.findall(r"\d+", match.group(1)))


class ModelRepository:
    """One model's folder in the repository (paths from ``settings.triton``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.triton.model_name
        self.root = settings.triton.model_repository.resolve()
        self.model_dir = self.root / self.name

    @property
    def config_path(self) -> Path:
        return self.model_dir / CONFIG_FILE

    def versions(self) -> list[int]:
        """Complete version folders, oldest first."""
        if not self.model_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.model_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def version_dir(self, version: int) -> Path:
        return self.model_dir / str(version)

    def metadata(self, version: int) -> dict[str, Any] | None:
        """A version's ``metadata.json``, or None when missing or unreadable."""
        try:
            return json.loads((self.version_dir(version) / runtime.METADATA_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def served(self) -> list[int]:
        """The versions ``config.pbtxt`` serves (empty without a config)."""
        try:
            return served_versions(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []

    def staging_dir(self) -> Path:
        """A fresh folder to build a version in, inside the model folder (so the final rename stays on one disk).

        Its name carries the builder's host and process id, so :meth:`remove_stale_staging` knows a killed build's.
        """
        self.model_dir.mkdir(parents=True, exist_ok=True)
        return self.model_dir / f"{STAGING_PREFIX}{_host()}-{_process_tag(os.getpid())}-{uuid.uuid4().hex[:12]}"

    def remove_stale_staging(self) -> list[str]:
        """Delete the staging folders of builds that died (their process is gone); returns their names.

        A folder of this host whose process is not alive is stale; one of another host (a shared volume) or without
        an owner in its name (older releases) is stale once untouched for a day.
        """
        if not self.model_dir.is_dir():
            return []
        removed = []
        for folder in self.model_dir.glob(f"{STAGING_PREFIX}*"):
            if _staging_is_stale(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        if removed:
            log.info("removed stale staging folders of %s", self.name, extra={"folders": removed})
        return removed

    # -- publish intent ------------------------------------------------------------------------------------------

    @property
    def intent_path(self) -> Path:
        return self.model_dir / INTENT_FILE

    def write_intent(self, intent: dict[str, Any]) -> None:
        """Atomically record a publish in progress (written before Triton loads the version)."""
        partial = self.intent_path.with_name(f"{INTENT_FILE}.{uuid.uuid4().hex[:8]}.partial")
        partial.write_text(json.dumps(intent), encoding="utf-8")
        os.replace(partial, self.intent_path)

    def read_intent(self) -> dict[str, Any] | None:
        """The publish in progress, or None (also for an unreadable file, which is then removed)."""
        try:
            intent = json.loads(self.intent_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("removing an unreadable publish intent %s: %s", self.intent_path, exc)
            self.clear_intent()
            return None
        if not isinstance(intent, dict) or not isinstance(intent.get("version"), int):
            log.warning("removing an invalid publish intent %s: %r", self.intent_path, intent)
            self.clear_intent()
            return None
        return intent

    def clear_intent(self) -> None:
        self.intent_path.unlink(missing_ok=True)

    # -- run log -------------------------------------------------------------------------------------------------

    @property
    def runs_path(self) -> Path:
        return self.model_dir / RUNS_FILE

    def record_run(self, record: dict[str, Any], keep: int = KEEP_RUNS) -> None:
        """Append one run record (a JSON line); the file keeps about the last ``keep`` records."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, default=str) + "\n"
        with open(self.runs_path, "a", encoding="utf-8") as handle:
            handle.write(line)
        try:
            size = self.runs_path.stat().st_size
        except OSError:
            return
        if size > keep * 2 * max(len(line), 256):
            lines = self.runs_path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
            if len(lines) > keep:
                partial = self.runs_path.with_name(f"{RUNS_FILE}.{uuid.uuid4().hex[:8]}.partial")
                partial.write_text("".join(lines[-keep:]), encoding="utf-8")
                os.replace(partial, self.runs_path)

    def runs(self, limit: int = 10) -> list[dict[str, Any]]:
        """The last ``limit`` runs, newest first: the records of one ``run`` id folded, the latest state winning."""
        try:
            lines = self.runs_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []
        runs: dict[str, dict[str, Any]] = {}
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("run"), str):
                runs[record["run"]] = {**runs.pop(record["run"], {}), **record}  # re-insert: latest record last
        return list(reversed(list(runs.values())))[:limit]

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the publish lock: one publish / promote / rollback at a time on this repository."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        with open(self.model_dir / LOCK_FILE, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write_config(self, versions: list[int], n_labels: int) -> None:
        """Atomically write ``config.pbtxt`` serving ``versions``; with no versions, remove it."""
        if not versions:
            self.config_path.unlink(missing_ok=True)
            return
        training = self.settings.training
        text = render_config(
            self.name,
            n_labels,
            versions,
            instance_count=training.instance_count,
            max_queue_delay_us=training.max_queue_delay_us,
            cpu_threads=training.cpu_threads,
            cpu_engine=training.cpu_engine,
        )
        partial = self.config_path.with_name(f"{CONFIG_FILE}.{uuid.uuid4().hex[:8]}.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, self.config_path)

    def install(self, build_dir: Path, version: int) -> Path:
        """Move a complete version folder to its number with one rename.

        Raises:
            PublishError: the number is taken, or the folder is not in the model folder's file system.
        """
        target = self.version_dir(version)
        if target.exists():
            raise PublishError(f"version folder {target} already exists")
        try:
            os.rename(build_dir, target)
        except OSError as exc:
            raise PublishError(f"cannot move {build_dir} to {target}: {exc}") from exc
        return target

    def remove(self, version: int) -> None:
        """Take a version folder out of Triton's sight with one rename, then delete it."""
        folder = self.version_dir(version)
        if folder.exists():
            trash = self.model_dir / f"{TRASH_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
            os.rename(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def prune(self, keep: int, protect: set[int]) -> list[int]:
        """Delete all but the ``keep`` newest versions, never one in ``protect``; returns the deleted ones."""
        versions = self.versions()
        newest = set(versions[-keep:]) if keep > 0 else set()
        removed = [v for v in versions if v not in newest and v not in protect]
        for version in removed:
            self.remove(version)
        for leftover in self.model_dir.glob(f"{TRASH_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return removed

    def issued(self) -> int:
        """The highest version number handed out so far (0 when none)."""
        try:
            return int((self.model_dir / ISSUED_FILE).read_text(encoding="utf-8").strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def next_version(self, *known: int | None) -> int:
        """One more than any version on disk, handed out before, or named in ``known``."""
        return max([0, self.issued(), *self.versions(), *(v for v in known if v is not None)]) + 1

    def issue(self, *known: int | None) -> int:
        """Hand out the next version number and remember it, so a rejected version's number is never reused.

        Call under :meth:`lock`.
        """
        version = self.next_version(*known)
        partial = self.model_dir / f"{ISSUED_FILE}.{uuid.uuid4().hex[:8]}.partial"
        partial.write_text(f"{version}\n", encoding="utf-8")
        os.replace(partial, self.model_dir / ISSUED_FILE)
        return version


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"


def _staging_is_stale(folder: Path) -> bool:
    parts = folder.name[len(STAGING_PREFIX) :].rsplit("-", 2)
    if len(parts) == 3 and parts[0] == _host() and parts[1].split(".")[0].isdigit():
        pid = int(parts[1].split(".")[0])
        return not pid_alive(pid) or _process_tag(pid) != parts[1]  # a reused pid (a restarted container) is another
    try:
        return time.time() - folder.stat().st_mtime > STALE_FOREIGN_STAGING_S
    except OSError:
        return False


def _process_tag(pid: int) -> str:
    """``<pid>.<start time>`` (Linux): names one process even where pids are reused, e.g. pid 1 in a container."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{pid}.{stat.rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return str(pid)
