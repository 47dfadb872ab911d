"""Least privilege on Kafka: one SCRAM identity per role, and the ACLs that let each role do its job and no more.

| role | reads | writes | groups |
|---|---|---|---|
| producer | - | events, labels | - |
| inference | events, models | predictions, dead letters | the inference group |
| features | events | its changelog topics (``<features group>-*``, which it creates) | the features group (prefix) |
| monitor | predictions, labels, models, drift | drift, dead letters | the monitor group |
| retrain | drift, labels, events, predictions, models | models | the retraining group |

Topic and group names come from the settings (prefix included), so the same table serves the local stack and a
cluster: ``driftloop stack acls`` prints it, ``--apply`` creates the ACLs through the configured (admin) client.
The local stack's SASL_SSL listener enforces them (StandardAuthorizer, deny when no ACL matches); its own user and
its PLAINTEXT listener on 127.0.0.1 stay super users (the stack's tools and the tests' fixtures use them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from foundation.settings import Settings

ROLES = ("producer", "inference", "features", "monitor", "retrain")

_READ = {
    "producer": (),
    "inference": ("events-v1", "models-v1"),
    "features": ("events-v1",),
    "monitor": ("predictions-v1", "labels-v1", "models-v1", "drift-v1"),
    "retrain": ("drift-v1", "labels-v1", "events-v1", "predictions-v1", "models-v1"),
}
_WRITE = {
    "producer": ("events-v1", "labels-v1"),
    "inference": ("predictions-v1", "dlq-v1"),
    "features": (),
    "monitor": ("drift-v1", "dlq-v1"),
    "retrain": ("models-v1",),
}


@dataclass(frozen=True)
class Grant:
    """One ACL: ``principal`` may do ``operation`` on ``resource`` (a topic or group, literal or prefix)."""

    principal: str
    resource_type: ResourceType
    name: str
    pattern: ResourcePatternType
    operation: AclOperation

    def binding(self) -> AclBinding:
        return AclBinding(
            self.resource_type, self.name, self.pattern, self.principal, "*", self.operation, AclPermissionType.ALLOW
        )

    def line(self) -> str:
        pattern = "prefixed" if self.pattern == ResourcePatternType.PREFIXED else "literal"
        return f"{self.principal} {self.operation.name} {self.resource_type.name.lower()}:{self.name} ({pattern})"


def username(settings: Settings, role: str) -> str:
    """The SCRAM user of a role: ``<stack user>-<role>`` (e.g. ``driftloop-inference``)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; known: {', '.join(ROLES)}")
    return f"{settings.stack.kafka_sasl_username}-{role}"


def role_password(stack_password: str, role: str) -> str:
    """The local stack's password of a role, derived from the stack's own password (nothing more to keep secret)."""
    digest = hmac.new(stack_password.encode(), f"driftloop-kafka-role:{role}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _group(settings: Settings, role: str) -> tuple[str, ResourcePatternType] | None:
    return {
        "inference": (settings.workers.inference_group, ResourcePatternType.LITERAL),
        "features": (settings.workers.features_group, ResourcePatternType.PREFIXED),
        "monitor": (settings.monitoring.group_id, ResourcePatternType.LITERAL),
        "retrain": (settings.retrain.group_id, ResourcePatternType.LITERAL),
    }.get(role)


def grants(settings: Settings, role: str) -> list[Grant]:
    """The ACLs of one role, named after the settings' topics and groups."""
    principal = f"User:{username(settings, role)}"
    topic, literal, prefixed = ResourceType.TOPIC, ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    out = []
    for name in _READ[role]:
        out += [
            Grant(principal, topic, settings.kafka.topic(name), literal, op)
            for op in (AclOperation.READ, AclOperation.DESCRIBE)
        ]
    for name in _WRITE[role]:
        out += [
            Grant(principal, topic, settings.kafka.topic(name), literal, op)
            for op in (AclOperation.WRITE, AclOperation.DESCRIBE)
        ]
    group = _group(settings, role)
    if group is not None:
        out.append(Grant(principal, ResourceType.GROUP, group[0], group[1], AclOperation.READ))
    if role == "features":  # faust creates, reads and writes its changelog and leader topics, named after its app id
        out.append(Grant(principal, topic, settings.workers.features_group, prefixed, AclOperation.ALL))
    return list(dict.fromkeys(out))  # a topic read and written is described once


def all_grants(settings: Settings) -> list[Grant]:
    return [grant for role in ROLES for grant in grants(settings, role)]
