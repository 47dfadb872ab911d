"""The model's folder in Triton's model repository: version folders, ``config.pbtxt`` and a publish lock.

Layout (``settings.triton.model_repository`` / ``settings.triton.model_name``)::

    classifier/
      config.pbtxt        the contract (inputs, outputs, batching) and the versions Triton serves
      .publish.lock       serialises publishers on this machine
      .last_version       the highest version number ever handed out (rejected ones included)
      .staging-<id>/      a version being built (Triton ignores non-numeric folders)
      3/ 4/ 5/            complete versions: model.py, runtime.py, weights, tokenizer, metadata.json

``config.pbtxt`` serves exactly the versions with a role (champion, candidate, previous champion) through a
``specific`` version policy; other kept versions stay on disk for lineage and for a rollback ``--to`` them.
Changing the policy and loading the model loads and unloads versions without touching the ones that stay.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from driftloop.settings import Settings
from training.exceptions import PublishError
from training.servable import runtime

MAX_BATCH_SIZE = 64
CONFIG_FILE = "config.pbtxt"
LOCK_FILE = ".publish.lock"
ISSUED_FILE = ".last_version"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"

_VERSIONS = re.compile(r"version_policy\s*:\s*\{\s*specific\s*:\s*\{\s*versions\s*:\s*\[([^\]]*)\]")


def render_config(
    name: str,
    n_labels: int,
    versions: list[int],
    *,
    n_features: int = len(runtime.FEATURE_NAMES),
    instance_count: int = 1,
    max_queue_delay_us: int = 2000,
) -> str:
    """The ``config.pbtxt`` of the classifier serving ``versions``.

    ``KIND_AUTO`` gives one instance group on each GPU when Triton has GPUs (the model then runs in fp16), else on
    the CPU; ``model.py`` reads the kind Triton chose.
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
        """A fresh folder to build a version in, inside the model folder (so the final rename stays on one disk)."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        return self.model_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"

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
            self.name, n_labels, versions,
            instance_count=training.instance_count, max_queue_delay_us=training.max_queue_delay_us,
        )  # fmt: skip
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
