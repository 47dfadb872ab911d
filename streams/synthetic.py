"""A seeded generator of labelled events, with an optional concept drift.

Before the drift, a text's label follows the words it is made of (three vocabularies, one per label). After the drift
the texts use new words the model never saw, and the label mapping changes: the old "positive" words now mean
"negative" and the other way round. Numeric attributes shift too. Labels are returned beside the events, so a caller
can publish them on the labels topic with a delay, as ground truth arrives in real life.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from streams.schemas import Event, Label

LABELS = ("negative", "neutral", "positive")

_VOCAB = {
    "negative": "broken late refund angry awful cancel slow rude missing worst".split(),
    "neutral": "order delivery account address update invoice question package status schedule".split(),
    "positive": "great fast love excellent thanks perfect helpful happy smooth recommend".split(),
}
# After the drift: words never seen before, and a changed mapping for the old words.
_DRIFT_VOCAB = {
    "negative": "glitchy laggy borked janky meh".split(),
    "neutral": "ticket sync portal webhook config".split(),
    "positive": "stellar slick snappy flawless chef-kiss".split(),
}
_DRIFT_MAPPING = {"negative": "positive", "neutral": "neutral", "positive": "negative"}
_FILLER = "the my a this it was is and with for".split()


@dataclass(frozen=True)
class LabelledEvent:
    event: Event
    label: str

    def label_record(self, labelled_at: datetime | None = None) -> Label:
        return Label(event_id=self.event.event_id, label=self.label, labelled_at=labelled_at or datetime.now(UTC))


class SyntheticStream:
    """Deterministic for a given seed.

    Args:
        seed: the random seed.
        entities: how many distinct entity ids to draw from.
        labels: the label set (the first three names are mapped to negative/neutral/positive vocabularies).
        id_seed: seed of the event ids alone (default: derived from ``seed``, so the same seed repeats the same
            ids). Event ids are unique by contract: a stream sent again to the same topics needs fresh ids, or the
            labels of the first sending join the events of the second (same id) in every dataset read back.
    """

    def __init__(
        self, seed: int = 0, entities: int = 50, labels: tuple[str, ...] = LABELS, id_seed: int | None = None
    ) -> None:
        if len(labels) != 3:
            raise ValueError("the synthetic stream knows exactly three labels")
        self._rng = random.Random(seed)
        self._entities = [f"entity-{i:04d}" for i in range(entities)]
        self._labels = dict(zip(LABELS, labels, strict=True))
        self._uuid_rng = random.Random(seed + 1 if id_seed is None else f"event-ids-{id_seed}")

    def one(self, event_time: datetime, drifted: bool = False) -> LabelledEvent:
        kind = self._rng.choice(LABELS)
        vocab = _DRIFT_VOCAB if drifted else _VOCAB
        label = _DRIFT_MAPPING[kind] if drifted else kind
        words = self._rng.choices(vocab[kind], k=self._rng.randint(2, 5))
        # Drifted texts also carry some old words of the *mapped* kind, so the old model is confidently wrong.
        if drifted:
            words += self._rng.choices(_VOCAB[kind], k=self._rng.randint(1, 2))
        words += self._rng.choices(_FILLER, k=self._rng.randint(2, 8))
        self._rng.shuffle(words)
        attributes = {
            "amount": round(self._rng.lognormvariate(4.0 if not drifted else 5.0, 0.5), 2),
            "items": float(self._rng.randint(1, 5) + (3 if drifted else 0)),
        }
        event = Event(
            event_id=str(uuid.UUID(int=self._uuid_rng.getrandbits(128), version=4)),
            entity_id=self._rng.choice(self._entities),
            event_time=event_time,
            text=" ".join(words),
            attributes=attributes,
        )
        return LabelledEvent(event, self._labels[label])

    def stream(
        self,
        n: int,
        start: datetime | None = None,
        interval: timedelta = timedelta(seconds=1),
        drift_at: int | None = None,
    ) -> Iterator[LabelledEvent]:
        """``n`` events spaced by ``interval`` from ``start``; events from index ``drift_at`` on are drifted."""
        start = start or datetime.now(UTC)
        for i in range(n):
            yield self.one(start + i * interval, drifted=drift_at is not None and i >= drift_at)

    def malformed(self) -> tuple[bytes | None, str]:
        """A value that breaks the event contract, and what is wrong with it (for DLQ tests and demos)."""
        good = self.one(datetime.now(UTC)).event.model_dump(mode="json")
        kind = self._rng.randrange(8)
        if kind == 0:
            return b"\xff\xfe not utf-8", "invalid UTF-8"
        if kind == 1:
            return b'{"event_id": "x", ', "truncated JSON"
        if kind == 2:
            good.pop("event_id")
            return _json(good), "missing event_id"
        if kind == 3:
            good["schema_version"] = 99
            return _json(good), "unknown schema version"
        if kind == 4:
            good["event_time"] = "yesterday"
            return _json(good), "bad event_time"
        if kind == 5:
            good["attributes"] = {"amount": "lots"}
            return _json(good), "non-numeric attribute"
        if kind == 6:
            return b"[" * 50 + b"]" * 50, "deeply nested JSON"
        return None, "null value"


def _json(data: dict) -> bytes:
    return json.dumps(data).encode()
