"""Publish a version to Triton, and change which version is champion.

Publishing a built version folder (see :mod:`training.export`), under the repository's publish lock:

1. the next version number is taken (never one handed out before, nor one on disk or on the models topic);
2. the folder moves to ``<model>/<version>/`` with one rename;
3. ``config.pbtxt`` serves it beside the versions that have a role, and Triton loads the model (explicit mode:
   versions already loaded keep serving, only the new one loads);
4. it must become ready and answer its smoke requests like it did in process;
5. only then is it announced on the models topic as the candidate; the replaced candidate stops being served and
   versions beyond ``keep_versions`` (never one with a role) are deleted.

A publish records its intent (``<model>/.publish-intent.json``: the version and the reason) before the folder moves
in and clears it after the announcement. A publish killed in between (Triton loaded the version, nobody announced
it) is finished on the next publish, promote, withdraw or start of the retraining consumer (:func:`recover_publish`):
the version is announced as candidate if it loads and answers its smoke requests, otherwise unloaded and removed.

A version that fails to load or to smoke-infer is unloaded and deleted, a ``rejected`` record names it, and
:class:`~training.exceptions.VersionRejected` is raised: the champion keeps serving and the version is never a
candidate. Promotion and rollback load their target first, announce the new roles, then retire what lost its role;
withdrawing drops the candidate (after a failed canary) and leaves the champion as it is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from foundation.settings import Settings
from streams.triton_client import InferenceServerException, TritonAdmin
from training.exceptions import PublishError, RegistryError, VersionRejected
from training.export import read_metadata, write_metadata
from training.registry import ModelState, announce, read_state
from training.repository import ModelRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Publication:
    """A published version: its number, folder, the models-topic state announced, and how long loading took."""

    version: int
    path: Path
    state: ModelState
    load_seconds: float


class TritonControl:
    """The few Triton calls publishing needs (:class:`~streams.triton_client.TritonAdmin`, gRPC; the server runs in
    explicit model control mode). ``error`` is the exception type a refused call raises."""

    error = InferenceServerException

    def __init__(self, settings: Settings) -> None:
        self.url = settings.triton_grpc
        self.timeout_s = settings.training.load_timeout_s
        self.client = TritonAdmin.of(settings, timeout_s=self.timeout_s)

    def check_live(self) -> None:
        """Raises PublishError when the server does not answer."""
        try:
            live = self.client.is_live()
        except Exception as exc:  # noqa: BLE001 - connection refused, timeouts, DNS: all mean "not reachable"
            raise PublishError(f"Triton at {self.url} is not reachable: {exc}") from exc
        if not live:
            raise PublishError(f"Triton at {self.url} is not live")

    def load(self, model: str) -> None:
        self.client.load(model)

    def unload(self, model: str) -> None:
        self.client.unload(model)

    def wait_ready(self, model: str, version: int, timeout_s: float | None = None) -> None:
        """Raises PublishError when the version is not ready within the timeout."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while not self.client.model_ready(model, version):
            if time.monotonic() > deadline:
                raise PublishError(f"{model} version {version} is not ready after {timeout_s or self.timeout_s:.0f}s")
            time.sleep(0.2)

    def infer(self, model: str, version: int, texts: list[str], features: np.ndarray) -> np.ndarray:
        """``PROBS`` for a batch of texts and features from one version."""
        return self.client.infer(model, version, texts, features)

    def states(self, model: str) -> dict[int, str]:
        """Version -> Triton state (``READY``, ``UNAVAILABLE``, ...) from the repository index."""
        index = self.client.repository_index()
        return {int(m["version"]): m.get("state", "") for m in index if m.get("name") == model and m.get("version")}

    def close(self) -> None:
        self.client.close()


def smoke_test(triton: TritonControl, model: str, version: int, smoke: dict[str, Any], atol: float) -> None:
    """Send the version's smoke requests; the answers must match its in-process probabilities within ``atol``.

    Raises:
        PublishError: an error answer, a wrong shape, non-finite values, rows not summing to 1, or a mismatch.
    """
    if not smoke.get("texts"):
        raise PublishError(f"{model} version {version} has no smoke sample in its metadata")
    features = np.asarray(smoke["features"], dtype=np.float32)
    expected = np.asarray(smoke["probs"], dtype=np.float32)
    try:
        got = triton.infer(model, version, list(smoke["texts"]), features)
    except triton.error as exc:
        raise PublishError(f"smoke request to {model} version {version} failed: {exc}") from exc
    if got is None or got.shape != expected.shape:
        raise PublishError(
            f"smoke answer of {model} v{version} has shape {getattr(got, 'shape', None)}, expected {expected.shape}"
        )
    if not np.isfinite(got).all() or not np.allclose(got.sum(axis=1), 1.0, atol=1e-3):
        raise PublishError(f"smoke answer of {model} v{version} is not a probability distribution: {got.tolist()}")
    diff = float(np.max(np.abs(got - expected)))
    if diff > atol:
        raise PublishError(f"smoke answer of {model} v{version} differs from in-process by {diff:.3g} (> {atol})")


class Publisher:
    """Publish, promote and roll back the versions of ``settings.triton.model_name``.

    Args:
        settings: Triton (``triton.*``), the models topic (``kafka.*``) and ``training.*`` (labels,
            ``keep_versions``, ``smoke_atol``, ``load_timeout_s``, ``retire_grace_s``).
        triton: the Triton control to use (tests may pass another); default: gRPC to ``settings.triton_grpc``.
    """

    def __init__(self, settings: Settings, triton: TritonControl | None = None) -> None:
        self.settings = settings
        self.repo = ModelRepository(settings)
        self.triton = triton or TritonControl(settings)
        self.name = self.repo.name
        self.labels = list(settings.training.labels)

    # -- publish ------------------------------------------------------------------------------------------------

    def publish(self, build_dir: Path, reason: str = "") -> Publication:
        """Move a built version folder in, load it, smoke-test it, announce it as candidate.

        Args:
            build_dir: a complete version folder (``metadata.version`` is set here), on the same file system as
                the repository (:meth:`ModelRepository.staging_dir` gives one).
            reason: why it was built (goes into the ``published`` record).

        Raises:
            VersionRejected: it failed to load or to answer its smoke requests; it was removed, the roles are
                unchanged and a ``rejected`` record was written.
            PublishError: Triton is unreachable, or the version's labels differ from the model's.
            RegistryError: the models topic cannot be read.
        """
        metadata = read_metadata(build_dir)
        if metadata.labels != self.labels:
            raise PublishError(
                f"the version's labels {metadata.labels} differ from the model's {self.labels} "
                "(settings.training.labels); a new label set needs a new model name"
            )
        self.triton.check_live()
        with self.repo.lock():
            self.recover()
            state = read_state(self.settings, self.name)
            before = self._live(state.serving())
            version = self.repo.issue(state.champion, state.candidate, state.previous_champion)
            write_metadata(build_dir, metadata.model_copy(update={"version": version}))
            self.repo.write_intent({"version": version, "reason": reason, "at": datetime.now(UTC).isoformat()})
            path = self.repo.install(build_dir, version)
            started = time.perf_counter()
            try:
                self._serve(sorted({*before, version}))
                self.triton.wait_ready(self.name, version)
                smoke_test(self.triton, self.name, version, metadata.smoke, self.settings.training.smoke_atol)
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, the version must go and the roles stay
                self._reject(state, before, version, f"{type(exc).__name__}: {exc}")
                self.repo.clear_intent()
                raise VersionRejected(f"{self.name} version {version} rejected: {exc}") from exc
            load_seconds = time.perf_counter() - started
            published = state.published(version, reason)
            try:
                announce(self.settings, published)
            except RegistryError:
                self._restore(before)
                self.repo.remove(version)
                self.repo.clear_intent()
                raise
            self.repo.clear_intent()
            self._retire(published)
        log.info("published %s version %d (%.1fs to load and smoke-test)", self.name, version, load_seconds)
        return Publication(version, path, published, load_seconds)

    def recover(self) -> int | None:
        """Finish or roll back a publish that was interrupted between Triton's load and the announcement.

        Call under the repository lock. The version of a pending intent is announced as candidate when it is in the
        repository, loads and answers its smoke requests like in process; otherwise it is unloaded and removed (a
        ``rejected`` record names it). An intent whose version was announced already is just cleared.

        Returns:
            The version the intent named when it now has a role; None when there was nothing to finish or it was
            rolled back.

        Raises:
            RegistryError: the models topic cannot be read or written (the intent stays for the next try).
        """
        intent = self.repo.read_intent()
        if intent is None:
            return None
        version = intent["version"]
        state = read_state(self.settings, self.name)
        if version in state.serving():  # announced; only the intent was left behind
            self.repo.clear_intent()
            return version
        before = self._live(state.serving())
        if not self.repo.version_dir(version).is_dir():  # killed before the folder moved in
            log.warning(
                "an interrupted publish of %s version %d left no folder; restoring %s", self.name, version, before
            )
            self._restore(before)
            self.repo.clear_intent()
            return None
        log.warning("finishing an interrupted publish of %s version %d", self.name, version)
        metadata = self.repo.metadata(version) or {}
        try:
            if metadata.get("labels") != self.labels:
                raise PublishError(f"labels {metadata.get('labels')} differ from the model's {self.labels}")
            self._serve(sorted({*before, version}))
            self.triton.wait_ready(self.name, version)
            smoke_test(self.triton, self.name, version, metadata.get("smoke") or {}, self.settings.training.smoke_atol)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the version must go and the roles stay
            self._reject(state, before, version, f"interrupted publish rolled back: {type(exc).__name__}: {exc}")
            self.repo.clear_intent()
            return None
        reason = f"{intent.get('reason') or ''} (publish finished after an interruption)".strip()
        published = state.published(version, reason)
        announce(self.settings, published)
        self.repo.clear_intent()
        log.info("published %s version %d after an interrupted publish", self.name, version)
        self._retire(published)
        return version

    def _reject(self, state: ModelState, before: list[int], version: int, reason: str) -> None:
        log.error("rejecting %s version %d: %s", self.name, version, reason)
        try:
            self._restore(before)
        finally:
            self.repo.remove(version)
        try:
            announce(self.settings, state.rejected(version, reason[:2000]))
        except RegistryError as exc:
            log.warning("could not announce the rejection of version %d: %s", version, exc)

    # -- promote / roll back ------------------------------------------------------------------------------------

    def promote(self, version: int | None = None, reason: str = "") -> ModelState:
        """Make ``version`` (default: the candidate) the champion; the old champion becomes previous champion.

        Raises:
            RegistryError: nothing to promote, or the version is already champion.
            PublishError: the version is not in the repository or does not load / answer.
        """
        return self._change(lambda state: state.promoted(version, reason))

    def rollback(self, to: int | None = None, reason: str = "") -> ModelState:
        """Make ``to`` (default: the previous champion) the champion again.

        Raises:
            RegistryError: nothing to roll back to, or the target already is champion.
            PublishError: the target is not in the repository or does not load / answer.
        """
        return self._change(lambda state: state.rolled_back(to, reason))

    def withdraw(self, version: int | None = None, reason: str = "") -> ModelState:
        """Drop the candidate (``version``, default: the current one): a ``rejected`` record, then it stops being
        served. The champion does not change; use this, not :meth:`rollback`, when a candidate fails its canary.

        Raises:
            RegistryError: there is no candidate, or ``version`` is not the candidate.
        """
        self.triton.check_live()
        with self.repo.lock():
            self.recover()
            new = read_state(self.settings, self.name).withdrawn(version, reason)
            announce(self.settings, new)
            self._retire(new)
        return new

    def _change(self, transition) -> ModelState:
        self.triton.check_live()
        with self.repo.lock():
            self.recover()
            state = read_state(self.settings, self.name)
            new = transition(state)
            target = new.champion
            metadata = self.repo.metadata(target) if target is not None else None
            if metadata is None:
                raise PublishError(f"{self.name} version {target} is not in {self.repo.model_dir}")
            if metadata.get("labels") != self.labels:
                raise PublishError(f"version {target} has labels {metadata.get('labels')}, the model {self.labels}")
            before = self._live(state.serving())
            try:
                self._serve(sorted({*before, *self._live(new.serving())}))
                self.triton.wait_ready(self.name, target)
                smoke_test(self.triton, self.name, target, metadata.get("smoke", {}), self.settings.training.smoke_atol)
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, the old serving set comes back
                self._restore(before)
                raise PublishError(f"{self.name} version {target} cannot serve: {exc}") from exc
            try:
                announce(self.settings, new)
            except RegistryError:
                self._restore(before)
                raise
            self._retire(new)
        return new

    # -- serving set --------------------------------------------------------------------------------------------

    def _live(self, versions: list[int]) -> list[int]:
        present = [v for v in versions if self.repo.version_dir(v).is_dir()]
        if missing := sorted(set(versions) - set(present)):
            log.warning("%s versions %s have a role but no folder in %s", self.name, missing, self.repo.model_dir)
        return present

    def _serve(self, versions: list[int]) -> None:
        self.repo.write_config(versions, len(self.labels))
        if versions:
            self.triton.load(self.name)
        else:
            self.triton.unload(self.name)

    def _restore(self, before: list[int]) -> None:
        try:
            self._serve(before)
        except Exception as exc:  # noqa: BLE001 - restoring is best effort; the caller raises the real error
            log.error("could not restore %s to versions %s: %s", self.name, before, exc)

    def _retire(self, state: ModelState) -> None:
        """Stop serving versions that lost their role (after a grace for clients that still use them); prune."""
        keep = self._live(state.serving())
        if set(keep) != set(self.repo.served()):
            time.sleep(self.settings.training.retire_grace_s)
            try:
                self._serve(keep)
            except Exception as exc:  # noqa: BLE001 - the roles are announced; a stale extra version is harmless
                log.warning("could not retire versions of %s: %s", self.name, exc)
        removed = self.repo.prune(self.settings.training.keep_versions, protect=set(state.serving()))
        if removed:
            log.info("pruned %s versions %s (keeping %d)", self.name, removed, self.settings.training.keep_versions)


def publish_version(settings: Settings, build_dir: Path, reason: str = "") -> Publication:
    """Publish a built version folder (see :meth:`Publisher.publish`)."""
    publisher = Publisher(settings)
    try:
        return publisher.publish(build_dir, reason)
    finally:
        publisher.triton.close()


def recover_publish(settings: Settings) -> int | None:
    """At a start: remove the staging folders of killed builds, and finish or roll back an interrupted publish
    (see :meth:`Publisher.recover`). Returns the version it announced, if any.

    Raises:
        PublishError: Triton is unreachable. RegistryError: the models topic cannot be read or written.
    """
    repo = ModelRepository(settings)
    repo.remove_stale_staging()
    if repo.read_intent() is None:
        return None
    publisher = Publisher(settings)
    try:
        publisher.triton.check_live()
        with publisher.repo.lock():
            return publisher.recover()
    finally:
        publisher.triton.close()


def promote(settings: Settings, version: int | None = None, reason: str = "") -> ModelState:
    """Promote a version to champion (see :meth:`Publisher.promote`)."""
    publisher = Publisher(settings)
    try:
        return publisher.promote(version, reason)
    finally:
        publisher.triton.close()


def withdraw(settings: Settings, version: int | None = None, reason: str = "") -> ModelState:
    """Drop the candidate without touching the champion (see :meth:`Publisher.withdraw`)."""
    publisher = Publisher(settings)
    try:
        return publisher.withdraw(version, reason)
    finally:
        publisher.triton.close()


def rollback(settings: Settings, to: int | None = None, reason: str = "") -> ModelState:
    """Roll the champion back (see :meth:`Publisher.rollback`)."""
    publisher = Publisher(settings)
    try:
        return publisher.rollback(to, reason)
    finally:
        publisher.triton.close()
