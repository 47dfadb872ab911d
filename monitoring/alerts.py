"""On-call delivery of drift events: Prometheus Alertmanager (API v2), PagerDuty Events v2, Slack-style webhooks.

Every receiver gets the same identity for an alert, the dedup key ``driftloop/<model>/<kind>``: Alertmanager as the
labels ``{alertname="ModelDrift", model, kind, severity, service="driftloop"}``, PagerDuty as ``dedup_key``.

Policy (``AlertDispatcher``):

- a firing alert is delivered to a webhook receiver (PagerDuty, Slack) at most once per ``cooldown_s`` and dedup key,
  so repeats while it stays open, and a re-fire soon after a resolve, page nobody twice;
- Alertmanager gets every firing check (its own ``group_wait``/``repeat_interval`` decide the paging), with ``endsAt``
  ``alert_ttl_s`` ahead, so an alert of a monitor that died expires instead of firing for ever;
- a resolve goes to Alertmanager, and to each webhook receiver that was sent the firing;
- each delivery is retried on connection errors, timeouts, 408, 425, 429 and 5xx with the one retry policy
  (``foundation.retry``: exponential backoff with jitter); other 4xx fail at once. A failed delivery is logged and
  counted; it never stops the monitor.

Secrets (webhook URLs, routing keys) are never logged: log lines and errors name the receiver, and any secret value
that would appear in an error message is masked.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol

import tenacity

from foundation.retry import policy
from foundation.settings import MonitoringSettings
from monitoring.exceptions import DeliveryFailed
from monitoring.metrics import MonitorMetrics
from streams.schemas import DriftEvent

log = logging.getLogger(__name__)

ALERT_NAME = "ModelDrift"
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_RETRY_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes = b""


class Transport(Protocol):
    """Sends one POST; raises ``OSError`` (``URLError``, timeouts) when no response came back."""

    def __call__(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> HttpResponse: ...


def urllib_transport(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> HttpResponse:
    """The default transport: ``urllib.request`` (no extra dependency), HTTP errors returned as responses."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - configured URL
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return HttpResponse(response.status, response.read())
    except urllib.error.HTTPError as exc:
        return HttpResponse(exc.code, exc.read() or b"")


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more attempts after the first, waiting ``backoff_s * 2**n`` plus up to ``backoff_s`` of jitter (at
    most ``backoff_max_s``) between them (``foundation.retry.policy``); each attempt times out after ``timeout_s``."""

    retries: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 10.0
    timeout_s: float = 5.0

    def retrying(self, what: str, sleep: Callable[[float], None] = time.sleep) -> tenacity.Retrying:
        """The retries of one delivery: :class:`_Retriable` failures, ``retries`` more times."""
        return policy(
            retry_on=_Retriable,
            attempts=self.retries + 1,
            initial_s=self.backoff_s,
            max_s=self.backoff_max_s,
            what=what,
            sleep=sleep,
        )


class _Retriable(Exception):  # noqa: N818 - a signal to the retry policy, never seen outside ``deliver``
    """A delivery attempt that failed in a way worth retrying (no response, 408/425/429, 5xx)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Receiver(ABC):
    """An on-call endpoint. ``keepalive`` receivers get every firing check, the others obey the cooldown."""

    name: str
    keepalive: bool = False

    @abstractmethod
    def request(self, event: DriftEvent) -> tuple[str, bytes, dict[str, str]]:
        """URL, body and headers of the notification of ``event``."""

    def secrets(self) -> tuple[str, ...]:
        """Values to mask in anything logged about this receiver."""
        return ()


class AlertmanagerReceiver(Receiver):
    """Prometheus Alertmanager, ``POST <url>/api/v2/alerts``.

    Args:
        url: Alertmanager's base URL (``http://alertmanager:9093``).
        alert_ttl_s: ``endsAt`` of a firing alert, from now; the monitor re-sends it on every check.
        generator_url: a link back put in ``generatorURL``.
    """

    keepalive = True

    def __init__(self, url: str, alert_ttl_s: float = 3600.0, generator_url: str | None = None) -> None:
        self.name = "alertmanager"
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.alert_ttl = timedelta(seconds=alert_ttl_s)
        self.generator_url = generator_url

    def request(self, event: DriftEvent) -> tuple[str, bytes, dict[str, str]]:
        return self.url, json.dumps([self.alert(event)]).encode(), {"Content-Type": "application/json"}

    def alert(self, event: DriftEvent) -> dict[str, Any]:
        """One ``postableAlert``: labels identify it; a resolved one ends at the check that cleared it."""
        ends = event.detected_at if event.status == "resolved" else datetime.now(UTC) + self.alert_ttl
        alert: dict[str, Any] = {
            "labels": alert_labels(event),
            "annotations": {
                "summary": summary(event),
                "description": _details_line(event),
                "model_version": str(event.version),
                "drifted_columns": ",".join(event.drifted_columns),
                "report_path": event.report_path or "",
                "event_id": event.id,
                "dedup_key": event.dedup_key,
            },
            "startsAt": _rfc3339(event.started_at),
            "endsAt": _rfc3339(ends),
        }
        if self.generator_url:
            alert["generatorURL"] = self.generator_url
        return alert


class PagerDutyReceiver(Receiver):
    """PagerDuty Events API v2 (or any endpoint that speaks it): trigger and resolve by ``dedup_key``."""

    def __init__(self, routing_key: str, url: str = PAGERDUTY_EVENTS_URL, generator_url: str | None = None) -> None:
        self.name = "pagerduty"
        self._routing_key = routing_key
        self._url = url
        self.generator_url = generator_url

    def secrets(self) -> tuple[str, ...]:
        return (self._routing_key, self._url)

    def request(self, event: DriftEvent) -> tuple[str, bytes, dict[str, str]]:
        return self._url, json.dumps(self.body(event)).encode(), {"Content-Type": "application/json"}

    def body(self, event: DriftEvent) -> dict[str, Any]:
        if event.status == "resolved":
            return {"routing_key": self._routing_key, "event_action": "resolve", "dedup_key": event.dedup_key}
        body: dict[str, Any] = {
            "routing_key": self._routing_key,
            "event_action": "trigger",
            "dedup_key": event.dedup_key,
            "client": "driftloop",
            "payload": {
                "summary": summary(event)[:1024],
                "source": f"driftloop-monitor/{event.model}",
                "severity": event.severity,
                "timestamp": _rfc3339(event.detected_at),
                "component": event.model,
                "group": f"{event.model} v{event.version}",
                "class": f"{event.kind} drift",
                "custom_details": {
                    "model_version": event.version,
                    "metrics": event.metrics,
                    "drifted_columns": event.drifted_columns,
                    "window": event.window.model_dump(mode="json"),
                    "report_path": event.report_path,
                    "event_id": event.id,
                },
            },
        }
        if self.generator_url:
            body["client_url"] = self.generator_url
            body["links"] = [{"href": self.generator_url, "text": "driftloop"}]
        return body


class SlackReceiver(Receiver):
    """A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat): ``text`` plus one attachment."""

    COLORS: ClassVar[dict[str, str]] = {"critical": "#d00000", "warning": "#f2a900", "resolved": "#2eb886"}

    def __init__(self, webhook_url: str) -> None:
        self.name = "slack"
        self._url = webhook_url

    def secrets(self) -> tuple[str, ...]:
        return (self._url,)

    def request(self, event: DriftEvent) -> tuple[str, bytes, dict[str, str]]:
        return self._url, json.dumps(self.body(event)).encode(), {"Content-Type": "application/json"}

    def body(self, event: DriftEvent) -> dict[str, Any]:
        resolved = event.status == "resolved"
        mark = "RESOLVED" if resolved else event.severity.upper()
        fields = [
            {"title": "Model", "value": f"{event.model} v{event.version}", "short": True},
            {"title": "Kind", "value": event.kind, "short": True},
            {
                "title": "Window",
                "value": f"{event.window.size} predictions ({event.window.labelled} labelled)",
                "short": True,
            },
            {"title": "Metrics", "value": _metrics_text(event.metrics), "short": True},
        ]
        if event.drifted_columns and not resolved:
            fields.append({"title": "Drifted columns", "value": ", ".join(event.drifted_columns), "short": False})
        if event.report_path:
            fields.append({"title": "Report", "value": event.report_path, "short": False})
        return {
            "text": f"[{mark}] {summary(event)}",
            "attachments": [
                {
                    "color": self.COLORS["resolved" if resolved else event.severity],
                    "title": f"{event.kind} drift {'resolved' if resolved else 'detected'}: {event.model}",
                    "fields": fields,
                    "footer": f"driftloop · {event.dedup_key}",
                    "ts": int(event.detected_at.timestamp()),
                }
            ],
        }


def alert_labels(event: DriftEvent) -> dict[str, str]:
    """The Alertmanager labels of an event: stable for the life of one alert."""
    return {
        "alertname": ALERT_NAME,
        "model": event.model,
        "kind": event.kind,
        "severity": event.severity,
        "service": "driftloop",
    }


def summary(event: DriftEvent) -> str:
    if event.status == "resolved":
        return f"{event.kind} drift of {event.model} v{event.version} cleared"
    columns = f" in {', '.join(event.drifted_columns)}" if event.drifted_columns else ""
    return f"{event.kind} drift of {event.model} v{event.version}{columns} ({_metrics_text(event.metrics)})"


def deliver(
    receiver: Receiver,
    event: DriftEvent,
    retry: RetryPolicy,
    transport: Transport = urllib_transport,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Send one notification, retrying transient failures.

    Returns:
        The number of attempts it took.

    Raises:
        DeliveryFailed: rejected (4xx other than 408/425/429), or still failing after ``retry.retries`` retries.
    """
    url, body, headers = receiver.request(event)
    attempts = 0

    def attempt() -> int:
        nonlocal attempts
        attempts += 1
        try:
            response = transport(url, body, headers, retry.timeout_s)
        except OSError as exc:  # URLError, ConnectionError, TimeoutError
            reason = _mask(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", receiver.secrets())
            raise _Retriable(reason) from None
        if 200 <= response.status < 300:
            return attempts
        reason = f"HTTP {response.status}"
        if response.status < 500 and response.status not in _RETRY_STATUS:
            raise DeliveryFailed(receiver.name, reason, attempts)
        raise _Retriable(reason)

    try:
        return retry.retrying(f"alert delivery to {receiver.name}", sleep)(attempt)
    except _Retriable as exc:
        raise DeliveryFailed(receiver.name, exc.reason, attempts) from None


class AlertDispatcher:
    """Delivers drift events to every receiver under the cooldown and resolve rules of the module docstring.

    Args:
        receivers: where to deliver.
        retry: retries and timeouts of each delivery.
        cooldown_s: the least time between two firing notifications of one dedup key to a webhook receiver.
        transport: the HTTP POST (tests inject one; the default is ``urllib_transport``).
        sleep: the wait between retries.
        clock: a monotonic clock for the cooldown.
        metrics: counts deliveries by receiver and outcome.
    """

    def __init__(
        self,
        receivers: Sequence[Receiver],
        retry: RetryPolicy | None = None,
        cooldown_s: float = 900.0,
        transport: Transport = urllib_transport,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        metrics: MonitorMetrics | None = None,
    ) -> None:
        self.receivers = list(receivers)
        self.retry = retry or RetryPolicy()
        self.cooldown_s = cooldown_s
        self._transport = transport
        self._sleep = sleep
        self._clock = clock
        self._metrics = metrics
        self._last_fired: dict[tuple[str, str], float] = {}
        self._open: set[tuple[str, str]] = set()

    def dispatch(self, event: DriftEvent) -> dict[str, str]:
        """Deliver ``event`` (firing or resolved) to each receiver that should get it.

        Returns:
            Receiver name -> ``"sent"``, ``"cooldown"`` (a firing within the cooldown), ``"not_fired"`` (a resolve
            for a receiver that never got the firing) or ``"failed"``.
        """
        outcomes: dict[str, str] = {}
        for receiver in self.receivers:
            slot = (event.dedup_key, receiver.name)
            now = self._clock()
            if event.status == "firing":
                last = self._last_fired.get(slot)
                if not receiver.keepalive and last is not None and now - last < self.cooldown_s:
                    outcomes[receiver.name] = "cooldown"
                    continue
            elif not receiver.keepalive and slot not in self._open:
                outcomes[receiver.name] = "not_fired"
                continue
            outcomes[receiver.name] = self._send(receiver, event)
            if outcomes[receiver.name] == "sent":
                if event.status == "firing":
                    self._last_fired[slot] = now
                    self._open.add(slot)
                else:
                    self._open.discard(slot)
        return outcomes

    def _send(self, receiver: Receiver, event: DriftEvent) -> str:
        context = {
            "receiver": receiver.name,
            "dedup_key": event.dedup_key,
            "status": event.status,
            "event_id": event.id,
        }
        try:
            attempts = deliver(receiver, event, self.retry, self._transport, self._sleep)
        except DeliveryFailed as exc:
            log.error("alert delivery failed", extra={**context, "reason": exc.reason, "attempts": exc.attempts})
            outcome = "failed"
        else:
            log.info("alert delivered", extra={**context, "attempts": attempts})
            outcome = "sent"
        if self._metrics is not None:
            self._metrics.deliveries.labels(receiver.name, outcome).inc()
        return outcome


def build_receivers(settings: MonitoringSettings) -> list[Receiver]:
    """The receivers configured in ``settings`` (none when nothing is configured)."""
    receivers: list[Receiver] = []
    if settings.alertmanager_url:
        receivers.append(AlertmanagerReceiver(settings.alertmanager_url, settings.alert_ttl_s, settings.generator_url))
    if settings.pagerduty_routing_key:
        receivers.append(
            PagerDutyReceiver(
                settings.pagerduty_routing_key.get_secret_value(),
                settings.pagerduty_url.get_secret_value(),
                settings.generator_url,
            )
        )
    if settings.slack_webhook_url:
        receivers.append(SlackReceiver(settings.slack_webhook_url.get_secret_value()))
    return receivers


def build_dispatcher(settings: MonitoringSettings, metrics: MonitorMetrics | None = None) -> AlertDispatcher:
    """An ``AlertDispatcher`` with the receivers, retries and cooldown of ``settings``."""
    retry = RetryPolicy(
        retries=settings.delivery_retries,
        backoff_s=settings.retry_backoff_s,
        backoff_max_s=settings.retry_backoff_max_s,
        timeout_s=settings.delivery_timeout_s,
    )
    return AlertDispatcher(build_receivers(settings), retry, settings.cooldown_s, metrics=metrics)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _metrics_text(metrics: dict[str, float]) -> str:
    shown = [(k, v) for k, v in metrics.items() if k in ("drift_share", "accuracy", "macro_f1", "accuracy_drop")]
    return ", ".join(f"{k}={v:.3g}" for k, v in shown) or "-"


def _details_line(event: DriftEvent) -> str:
    window = event.window
    span = f"{_rfc3339(window.start)}..{_rfc3339(window.end)}, " if window.start and window.end else ""
    return f"{summary(event)}; window {span}{window.size} predictions, {window.labelled} labelled"


def _mask(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
