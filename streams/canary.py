"""Which model version answers an event: the champion, or the candidate for a stable share of events.

The split hashes the event id, so a redelivered event goes to the same version again, and every replica agrees.
"""

from __future__ import annotations

import hashlib

from streams.schemas import ModelState


def in_canary(event_id: str, share: float) -> bool:
    """True for a stable ``share`` (0..1) of event ids."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def route(event_ids: list[str], state: ModelState | None, share: float) -> list[int | None]:
    """The version each event is sent to: the candidate for the canary share when there is one, else the champion
    (None: no champion announced yet, Triton's default version)."""
    champion = state.champion if state else None
    candidate = state.candidate if state and state.candidate != champion else None
    if candidate is None or share <= 0:
        return [champion] * len(event_ids)
    return [candidate if in_canary(event_id, share) else champion for event_id in event_ids]
