"""Publish a version to Triton, and change which version is champion.

Publishing a built version folder (see :mod:`training.export`), under the repository's publish lock:

1. the next version number is taken (never one handed out before, nor one on disk or on the models topic);
2. the folder moves to ``<model>/<version>/`` with one rename;
3. ``config.pbtxt`` serves it beside the versions that have a role, and Triton loads the model (explicit mode:
   versions already loaded keep serving, only the new one loads);
4. it must answer its smoke requests in process with each engine its folder carries (the weights in torch, the
   graph in ONNX Runtime: Triton runs only one of them, the graph on a CPU and the weights on a GPU), then become
   ready in Triton and answer them there like it did in process;
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

Triton replicas. Every server that serves the repository must be told to load a version (explicit model-control
mode): ``triton.replicas`` and the addresses ``triton.replicas_dns`` resolves to (a Kubernetes headless Service,
resolved again each time), else the one ``settings.triton_grpc`` (:func:`replica_urls`). A publish, promotion,
rollback or withdrawal loads, waits for and smoke-tests its version on every replica that answers, one after the
other, with the admin key on each; it succeeds only when all of them pass, and one failure rolls every replica back
to the versions served before. A replica that does not answer (a node drain, a restart) is left out with a warning
and a count in ``driftloop_triton_replica_unreachable_total{action}``, but at least one must take the version.
:meth:`Publisher.reconcile` brings a replica that comes back (with nothing loaded, or with versions that lost their
role) to the versions with a role on the models topic, smoke-testing what it loads; the retraining consumer runs it
at its start and every ``retrain.reconcile_interval_s``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter

from foundation.settings import Settings
from streams.triton_client import InferenceServerException, TritonAdmin, admin_headers
from training.exceptions import ExportError, PublishError, RegistryError, VersionRejected
from training.export import check_engines, engines, read_metadata, write_metadata
from training.registry import ModelState, announce, read_state
from training.repository import ModelRepository

log = logging.getLogger(__name__)

UNREACHABLE = Counter(
    "driftloop_triton_replica_unreachable",
    "Triton replicas left out of a publish, promotion, rollback, withdrawal or reconcile because they did not answer "
    "(a reconcile brings them to the served versions once they answer)",
    ["action"],
)
RECONCILED = Counter(
    "driftloop_triton_replica_reconciled",
    "Triton replicas a reconcile found off the served versions: converged (loaded, unloaded, smoke-tested) or failed",
    ["outcome"],
)


@dataclass(frozen=True)
class Publication:
    """A published version: its number, folder, the models-topic state announced, and how long loading took."""

    version: int
    path: Path
    state: ModelState
    load_seconds: float


def replica_urls(settings: Settings, resolve: Callable[..., list] = socket.getaddrinfo) -> list[str]:
    """The gRPC addresses (``host:port``) of every Triton replica, in a stable order, without duplicates.

    ``triton.replicas``, then every address ``triton.replicas_dns`` resolves to now (``resolve``: the resolver, as
    :func:`socket.getaddrinfo`; a name that does not resolve adds nothing and is logged); neither set: the one
    ``settings.triton_grpc``.
    """
    triton = settings.triton
    if not triton.replicas and not triton.replicas_dns:
        return [settings.triton_grpc]
    urls = [url.split("://", 1)[-1].rstrip("/") for url in triton.replicas]
    if triton.replicas_dns:
        host, port = triton.replicas_dns.rsplit(":", 1)
        try:
            found = resolve(host, int(port), type=socket.SOCK_STREAM)
        except OSError as exc:  # socket.gaierror: no such name (yet), DNS down
            log.warning("the Triton replicas name %s does not resolve: %s", triton.replicas_dns, exc)
            found = []
        addresses = sorted({(family, sockaddr[0]) for family, _, _, _, sockaddr in found}, key=lambda a: a[1])
        urls += [f"[{a}]:{port}" if family == socket.AF_INET6 else f"{a}:{port}" for family, a in addresses]
    return list(dict.fromkeys(urls))


class TritonControl:
    """The few Triton calls publishing needs, on one server (:class:`~streams.triton_client.TritonAdmin`, gRPC, with
    ``triton.admin_key``; the server runs in explicit model control mode). ``error`` is the exception type a refused
    call raises.

    Args:
        settings: the admin key, ``training.load_timeout_s`` (each call's deadline) and ``triton.replica_timeout_s``
            (the deadline of :meth:`answers`).
        url: the server's gRPC ``host:port``; default ``settings.triton_grpc``.
    """

    error = InferenceServerException

    def __init__(self, settings: Settings, url: str | None = None) -> None:
        self.url = url or settings.triton_grpc
        self.timeout_s = settings.training.load_timeout_s
        self.probe_timeout_s = settings.triton.replica_timeout_s
        self.client = TritonAdmin(self.url, self.timeout_s, admin_headers(settings))
        # Versions that answered their smoke requests on this server since this control first reached it.
        self.verified: set[int] = set()

    def answers(self) -> bool:
        """Whether the server answers "live" within ``triton.replica_timeout_s``."""
        try:
            return bool(self.client.is_live(self.probe_timeout_s))
        except Exception:  # noqa: BLE001 - connection refused, timeouts, DNS: all mean "not reachable"
            return False

    def check_live(self) -> None:
        """Raises PublishError when the server does not answer."""
        try:
            live = self.client.is_live(self.probe_timeout_s)
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

    def ready_versions(self, model: str) -> set[int]:
        """The versions of ``model`` the server has ready."""
        return {version for version, state in self.states(model).items() if state == "READY"}

    def close(self) -> None:
        self.client.close()


class TritonReplicas:
    """Every Triton replica of the model repository (:func:`replica_urls`, resolved again at each
    :meth:`reachable`), one :class:`TritonControl` each, kept while the replica answers.

    Args:
        settings: ``triton.*`` (replicas, admin key, probe timeout) and ``training.load_timeout_s``.
        connect: the control of one address (tests may pass another); default :class:`TritonControl`.
    """

    def __init__(self, settings: Settings, connect: Callable[[str], TritonControl] | None = None) -> None:
        self.settings = settings
        self._connect = connect or (lambda url: TritonControl(settings, url))
        self._controls: dict[str, TritonControl] = {}

    def control(self, url: str) -> TritonControl:
        """The control of one address (made on first use)."""
        if url not in self._controls:
            self._controls[url] = self._connect(url)
        return self._controls[url]

    @property
    def primary(self) -> TritonControl:
        """The first replica's control, for calls that one server answers (``settings.triton_grpc`` by default)."""
        urls = replica_urls(self.settings)
        return self.control(urls[0] if urls else self.settings.triton_grpc)

    def reachable(self, action: str) -> list[TritonControl]:
        """The replicas that answer now, in address order; the others are left out (:meth:`skip`).

        Raises:
            PublishError: no replica answers (or none is configured or resolves).
        """
        urls = replica_urls(self.settings)
        for gone in set(self._controls) - set(urls):  # no longer resolved (a pod that went away)
            self._drop(gone)
        live = []
        for url in urls:
            control = self.control(url)
            if control.answers():
                live.append(control)
            else:
                self.skip(control, action, "does not answer")
        if len(urls) == 1 and not live:
            raise PublishError(f"Triton at {urls[0]} is not reachable")
        if not live:
            where = ", ".join(urls) or f"{self.settings.triton.replicas_dns} resolves to no address"
            raise PublishError(f"no Triton replica is reachable ({where})")
        return live

    def held(self, controls: list[TritonControl]) -> list[TritonControl]:
        """Those of ``controls`` not left out since (:meth:`skip` closes a control)."""
        return [c for c in controls if self._controls.get(c.url) is c]

    def skip(self, control: TritonControl, action: str, why: str) -> None:
        """Leave a replica that does not answer out of ``action``: logged, counted, and its control closed (what it
        verified is forgotten: when it answers again it may be a restarted server)."""
        log.warning(
            "Triton replica %s %s: left out of this %s; a reconcile brings it to the served versions once it answers",
            control.url,
            why,
            action,
            extra={"replica": control.url, "action": action},
        )
        UNREACHABLE.labels(action).inc()
        self._drop(control.url)

    def _drop(self, url: str) -> None:
        control = self._controls.pop(url, None)
        if control is not None:
            control.close()

    def close(self) -> None:
        for url in list(self._controls):
            self._drop(url)


def check_in_process(version_dir: Path, smoke: dict[str, Any], atol: float) -> None:
    """The version's smoke requests in process, with each engine its folder carries: each must give the recorded
    probabilities within ``atol``. (A folder without a smoke sample is refused by :func:`smoke_test`; one that
    carries no engine's files, a ``model.py`` of the user's own, is checked in Triton only.)

    Raises:
        PublishError: an engine does not load the folder or answers otherwise.
    """
    if not smoke.get("texts") or not engines(version_dir):
        return
    features = np.asarray(smoke["features"], dtype=np.float32)
    want = np.asarray(smoke["probs"], dtype=np.float32)
    try:
        check_engines(version_dir, list(smoke["texts"]), features, want, atol, "its smoke sample")
    except ExportError as exc:
        raise PublishError(str(exc)) from exc


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
    """Publish, promote and roll back the versions of ``settings.triton.model_name``, on every Triton replica.

    Args:
        settings: Triton (``triton.*``), the models topic (``kafka.*``) and ``training.*`` (labels,
            ``keep_versions``, ``smoke_atol``, ``load_timeout_s``, ``retire_grace_s``).
        replicas: the Triton replicas to use (tests may pass others); default: :class:`TritonReplicas` of
            ``settings``.
    """

    def __init__(self, settings: Settings, replicas: TritonReplicas | None = None) -> None:
        self.settings = settings
        self.repo = ModelRepository(settings)
        self.replicas = replicas or TritonReplicas(settings)
        self.name = self.repo.name
        self.labels = list(settings.training.labels)

    @property
    def triton(self) -> TritonControl:
        """The first replica's control (one server's calls, e.g. a request to one version)."""
        return self.replicas.primary

    def close(self) -> None:
        self.replicas.close()

    # -- publish ------------------------------------------------------------------------------------------------

    def publish(self, build_dir: Path, reason: str = "") -> Publication:
        """Move a built version folder in, load it and smoke-test it on every replica, announce it as candidate.

        Args:
            build_dir: a complete version folder (``metadata.version`` is set here), on the same file system as
                the repository (:meth:`ModelRepository.staging_dir` gives one).
            reason: why it was built (goes into the ``published`` record).

        Raises:
            VersionRejected: it failed to load or to answer its smoke requests on a replica; it was removed, every
                replica serves what it served before, the roles are unchanged and a ``rejected`` record was written.
            PublishError: no Triton replica is reachable, or the version's labels differ from the model's.
            RegistryError: the models topic cannot be read.
        """
        metadata = read_metadata(build_dir)
        if metadata.labels != self.labels:
            raise PublishError(
                f"the version's labels {metadata.labels} differ from the model's {self.labels} "
                "(settings.training.labels); a new label set needs a new model name"
            )
        replicas = self.replicas.reachable("publish")
        with self.repo.lock():
            self.recover(replicas)
            state = read_state(self.settings, self.name)
            before = self._live(state.serving())
            version = self.repo.issue(state.champion, state.candidate, state.previous_champion)
            write_metadata(build_dir, metadata.model_copy(update={"version": version}))
            self.repo.write_intent({"version": version, "reason": reason, "at": datetime.now(UTC).isoformat()})
            path = self.repo.install(build_dir, version)
            started = time.perf_counter()
            try:
                check_in_process(path, metadata.smoke, self.settings.training.smoke_atol)
                served = self._serve_checked(
                    replicas, sorted({*before, version}), [(version, metadata.smoke)], "publish"
                )
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, the version must go and the roles stay
                self._reject(replicas, state, before, version, f"{type(exc).__name__}: {exc}")
                self.repo.clear_intent()
                raise VersionRejected(f"{self.name} version {version} rejected: {exc}") from exc
            load_seconds = time.perf_counter() - started
            published = state.published(version, reason)
            try:
                announce(self.settings, published)
            except RegistryError:
                self._restore(replicas, before)
                self.repo.remove(version)
                self.repo.clear_intent()
                raise
            self.repo.clear_intent()
            self._retire(served, published)
        log.info(
            "published %s version %d on %d Triton replica(s) (%.1fs to load and smoke-test)",
            self.name,
            version,
            len(served),
            load_seconds,
            extra={"replicas": [r.url for r in served]},
        )
        return Publication(version, path, published, load_seconds)

    def recover(self, replicas: list[TritonControl] | None = None) -> int | None:
        """Finish or roll back a publish that was interrupted between Triton's load and the announcement.

        Call under the repository lock. The version of a pending intent is announced as candidate when it is in the
        repository, loads and answers its smoke requests like in process on every replica; otherwise it is unloaded
        and removed (a ``rejected`` record names it). An intent whose version was announced already is just cleared.

        Args:
            replicas: the replicas to act on (default: those that answer now).

        Returns:
            The version the intent named when it now has a role; None when there was nothing to finish or it was
            rolled back.

        Raises:
            PublishError: no Triton replica is reachable (the intent stays for the next try).
            RegistryError: the models topic cannot be read or written (the intent stays for the next try).
        """
        intent = self.repo.read_intent()
        if intent is None:
            return None
        if replicas is None:
            replicas = self.replicas.reachable("recover")
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
            self._restore(replicas, before)
            self.repo.clear_intent()
            return None
        log.warning("finishing an interrupted publish of %s version %d", self.name, version)
        metadata = self.repo.metadata(version) or {}
        try:
            if metadata.get("labels") != self.labels:
                raise PublishError(f"labels {metadata.get('labels')} differ from the model's {self.labels}")
            checks = [(version, metadata.get("smoke") or {})]
            served = self._serve_checked(replicas, sorted({*before, version}), checks, "recover")
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the version must go and the roles stay
            reason = f"interrupted publish rolled back: {type(exc).__name__}: {exc}"
            self._reject(replicas, state, before, version, reason)
            self.repo.clear_intent()
            return None
        reason = f"{intent.get('reason') or ''} (publish finished after an interruption)".strip()
        published = state.published(version, reason)
        announce(self.settings, published)
        self.repo.clear_intent()
        log.info("published %s version %d after an interrupted publish", self.name, version)
        self._retire(served, published)
        return version

    def _reject(
        self, replicas: list[TritonControl], state: ModelState, before: list[int], version: int, reason: str
    ) -> None:
        log.error("rejecting %s version %d: %s", self.name, version, reason)
        try:
            self._restore(replicas, before)
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
            PublishError: the version is not in the repository or does not load / answer on a replica.
        """
        return self._change(lambda state: state.promoted(version, reason), "promote")

    def rollback(self, to: int | None = None, reason: str = "") -> ModelState:
        """Make ``to`` (default: the previous champion) the champion again.

        Raises:
            RegistryError: nothing to roll back to, or the target already is champion.
            PublishError: the target is not in the repository or does not load / answer on a replica.
        """
        return self._change(lambda state: state.rolled_back(to, reason), "rollback")

    def withdraw(self, version: int | None = None, reason: str = "") -> ModelState:
        """Drop the candidate (``version``, default: the current one): a ``rejected`` record, then it stops being
        served. The champion does not change; use this, not :meth:`rollback`, when a candidate fails its canary.

        Raises:
            RegistryError: there is no candidate, or ``version`` is not the candidate.
        """
        replicas = self.replicas.reachable("withdraw")
        with self.repo.lock():
            self.recover(replicas)
            new = read_state(self.settings, self.name).withdrawn(version, reason)
            announce(self.settings, new)
            self._retire(replicas, new)
        return new

    def _change(self, transition, action: str) -> ModelState:
        replicas = self.replicas.reachable(action)
        with self.repo.lock():
            self.recover(replicas)
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
                versions = sorted({*before, *self._live(new.serving())})
                served = self._serve_checked(replicas, versions, [(target, metadata.get("smoke", {}))], action)
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, the old serving set comes back
                self._restore(replicas, before)
                raise PublishError(f"{self.name} version {target} cannot serve: {exc}") from exc
            try:
                announce(self.settings, new)
            except RegistryError:
                self._restore(replicas, before)
                raise
            self._retire(served, new)
        return new

    # -- reconcile ----------------------------------------------------------------------------------------------

    def reconcile(self) -> dict[str, list[int]]:
        """Bring every replica that answers to the versions with a role on the models topic.

        Under the repository lock: an interrupted publish is finished or rolled back first (:meth:`recover`); a
        ``config.pbtxt`` that does not serve exactly the versions with a role (a retirement that failed) is
        rewritten; then each replica that serves other versions (one restarted with nothing loaded, or one that
        missed a publish, promotion or retirement while it did not answer) is loaded from it, which loads the missing
        versions and unloads the others. Every version a replica serves is smoke-tested there once (again when the
        replica was out of reach since, or had to load it). A replica that fails is logged and counted
        (``driftloop_triton_replica_reconciled_total{outcome="failed"}``) and tried again at the next reconcile; the
        roles never change here, and with no version with a role nothing is unloaded.

        Returns:
            Each reachable replica's address -> the versions with a role it serves and that passed their smoke test
            (empty when no version has a role).

        Raises:
            PublishError: no Triton replica is reachable. RegistryError: the models topic cannot be read.
        """
        replicas = self.replicas.reachable("reconcile")
        with self.repo.lock():
            self.recover(replicas)
            want = self._live(read_state(self.settings, self.name).serving())
            if not want:  # nothing to serve, or a models topic that is not this deployment's: never unload it all
                log.debug("%s has no version with a role: the Triton replicas are left as they are", self.name)
                return {}
            if self.repo.served() != want:
                log.warning("%s config.pbtxt serves %s, the roles %s: rewritten", self.name, self.repo.served(), want)
                self.repo.write_config(want, len(self.labels))
            return {replica.url: self._converge(replica, want) for replica in self.replicas.held(replicas)}

    def _converge(self, replica: TritonControl, want: list[int]) -> list[int]:
        """Load ``want`` on one replica when it serves other versions; smoke-test what it has not passed yet."""
        try:
            ready = replica.ready_versions(self.name)
            if ready != set(want):
                log.warning(
                    "Triton replica %s serves %s versions %s instead of %s: loading them",
                    replica.url,
                    self.name,
                    sorted(ready),
                    want,
                    extra={"replica": replica.url},
                )
                replica.verified.clear()
                self._serve_on(replica, want)
            for version in want:
                if version not in replica.verified:
                    smoke = (self.repo.metadata(version) or {}).get("smoke") or {}
                    self._check_on(replica, version, smoke)
        except Exception as exc:  # noqa: BLE001 - one replica's failure must not stop the others' reconcile
            if not replica.answers():
                self.replicas.skip(replica, "reconcile", f"stopped answering ({exc})")
                return []
            log.error(
                "Triton replica %s cannot serve %s versions %s: %s",
                replica.url,
                self.name,
                want,
                exc,
                extra={"replica": replica.url, "error": type(exc).__name__},
            )
            RECONCILED.labels("failed").inc()
            return sorted(replica.verified & set(want))
        if ready != set(want):
            RECONCILED.labels("converged").inc()
            log.info("Triton replica %s serves %s versions %s", replica.url, self.name, want)
        return sorted(want)

    # -- serving set --------------------------------------------------------------------------------------------

    def _live(self, versions: list[int]) -> list[int]:
        present = [v for v in versions if self.repo.version_dir(v).is_dir()]
        if missing := sorted(set(versions) - set(present)):
            log.warning("%s versions %s have a role but no folder in %s", self.name, missing, self.repo.model_dir)
        return present

    def _serve_on(self, replica: TritonControl, versions: list[int]) -> None:
        """Make one replica serve what ``config.pbtxt`` serves (``versions``; none: unload the model)."""
        if versions:
            replica.load(self.name)
        else:
            replica.unload(self.name)

    def _check_on(self, replica: TritonControl, version: int, smoke: dict[str, Any]) -> None:
        replica.wait_ready(self.name, version)
        smoke_test(replica, self.name, version, smoke, self.settings.training.smoke_atol)
        replica.verified.add(version)

    def _serve_checked(
        self,
        replicas: list[TritonControl],
        versions: list[int],
        checks: list[tuple[int, dict[str, Any]]],
        action: str,
    ) -> list[TritonControl]:
        """Serve ``versions`` on every replica, each version of ``checks`` ready and answering its smoke requests
        on each, one replica after the other. A replica that stops answering meanwhile is left out.

        Returns:
            The replicas that serve them.

        Raises:
            PublishError: a replica that answers failed (its address in the message), or none is left.
        """
        self.repo.write_config(versions, len(self.labels))
        served = []
        for replica in self.replicas.held(replicas):
            try:
                self._serve_on(replica, versions)
                for version, smoke in checks:
                    self._check_on(replica, version, smoke)
            except Exception as exc:
                if replica.answers():
                    detail = str(exc) if isinstance(exc, PublishError) else f"{type(exc).__name__}: {exc}"
                    raise PublishError(f"on Triton {replica.url}: {detail}") from exc
                self.replicas.skip(replica, action, f"stopped answering ({type(exc).__name__})")
                continue
            served.append(replica)
        if not served:
            raise PublishError(f"no Triton replica is left to serve {self.name} versions {versions}")
        return served

    def _restore(self, replicas: list[TritonControl], before: list[int]) -> None:
        """Serve ``before`` again on every replica (best effort; the caller raises the real error)."""
        try:
            self.repo.write_config(before, len(self.labels))
        except OSError as exc:
            log.error("could not restore %s to versions %s: %s", self.name, before, exc)
            return
        for replica in self.replicas.held(replicas):
            try:
                self._serve_on(replica, before)
            except Exception as exc:  # noqa: BLE001 - best effort; a reconcile tries again
                log.error("could not restore %s to versions %s on Triton %s: %s", self.name, before, replica.url, exc)

    def _retire(self, replicas: list[TritonControl], state: ModelState) -> None:
        """Stop serving versions that lost their role (after a grace for clients that still use them); prune."""
        keep = self._live(state.serving())
        if set(keep) != set(self.repo.served()):
            time.sleep(self.settings.training.retire_grace_s)
            try:
                self.repo.write_config(keep, len(self.labels))
                for replica in self.replicas.held(replicas):
                    try:
                        self._serve_on(replica, keep)
                    except Exception as exc:  # noqa: BLE001 - the roles are announced; a reconcile tries again
                        log.warning("could not retire versions of %s on Triton %s: %s", self.name, replica.url, exc)
            except OSError as exc:
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
        publisher.close()


def recover_publish(settings: Settings) -> int | None:
    """At a start: remove the staging folders of killed builds, and finish or roll back an interrupted publish
    (see :meth:`Publisher.recover`). Returns the version it announced, if any.

    Raises:
        PublishError: no Triton replica is reachable. RegistryError: the models topic cannot be read or written.
    """
    repo = ModelRepository(settings)
    repo.remove_stale_staging()
    if repo.read_intent() is None:
        return None
    publisher = Publisher(settings)
    try:
        replicas = publisher.replicas.reachable("recover")
        with publisher.repo.lock():
            return publisher.recover(replicas)
    finally:
        publisher.close()


def promote(settings: Settings, version: int | None = None, reason: str = "") -> ModelState:
    """Promote a version to champion (see :meth:`Publisher.promote`)."""
    publisher = Publisher(settings)
    try:
        return publisher.promote(version, reason)
    finally:
        publisher.close()


def withdraw(settings: Settings, version: int | None = None, reason: str = "") -> ModelState:
    """Drop the candidate without touching the champion (see :meth:`Publisher.withdraw`)."""
    publisher = Publisher(settings)
    try:
        return publisher.withdraw(version, reason)
    finally:
        publisher.close()


def rollback(settings: Settings, to: int | None = None, reason: str = "") -> ModelState:
    """Roll the champion back (see :meth:`Publisher.rollback`)."""
    publisher = Publisher(settings)
    try:
        return publisher.rollback(to, reason)
    finally:
        publisher.close()
