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


def serving_versions(state: ModelState | None, served: frozenset[int]) -> tuple[int | None, int | None]:
    """``(champion, candidate)`` to call, each an explicit version that Triton serves (never Triton's default).

    The announced champion when it is served; else (announced before this server loaded it, or never loadable) the
    previous champion, else the newest served version that is not the announced candidate - so a candidate is never
    labelled "champion". The candidate only when it and the announced champion are served (a canary against another
    version would judge the wrong pair). ``None`` champion: nothing usable is served (an outage to wait out).
    """
    announced = state.champion if state else None
    candidate = state.candidate if state else None
    if announced in served:
        champion = announced
    elif state and state.previous_champion in served:
        champion = state.previous_champion
    else:
        others = sorted(v for v in served if v != candidate)
        champion = others[-1] if others else None
    if candidate not in served or candidate == champion or champion is None or champion != announced:
        candidate = None
    return champion, candidate


def route(event_ids: list[str], champion: int, candidate: int | None, share: float) -> list[int]:
    """The version each event is sent to: the candidate for a stable ``share`` of events when there is one, else the
    champion."""
    if candidate is None or candidate == champion or share <= 0:
        return [champion] * len(event_ids)
    return [candidate if in_canary(event_id, share) else champion for event_id in event_ids]
