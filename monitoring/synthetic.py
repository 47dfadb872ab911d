"""A stand-in model for demos, tests and benchmarks of the monitor: predictions without Triton.

``WordModel`` is a multinomial naive Bayes over words, fitted on labelled events of ``streams.synthetic``. Its
vocabulary is the words it saw, so texts after the synthetic concept drift have a high ``oov_share``, and its
predictions of drifted texts are confidently wrong: the shifts the monitor has to find.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitoring.reference import reference_row
from streams.schemas import Event, ModelRef, Prediction, Timings
from streams.synthetic import LabelledEvent
from streams.text_stats import text_stats

_SHARPNESS = 4.0
_TIMINGS = Timings(queue=1.0, features=1.0, inference=2.0, end_to_end=5.0)


class WordModel:
    """Naive Bayes over lower-cased words, with add-one smoothing.

    Args:
        name: the model name put in predictions.
        version: the version put in predictions.
        feature_names: event attributes passed through as the prediction's features.
    """

    def __init__(
        self, name: str = "classifier", version: int = 1, feature_names: tuple[str, ...] = ("amount", "items")
    ) -> None:
        self.name = name
        self.version = version
        self.feature_names = feature_names
        self.labels: tuple[str, ...] = ()
        self.vocab: frozenset[str] = frozenset()
        self._log_prior: dict[str, float] = {}
        self._log_likelihood: dict[str, dict[str, float]] = {}

    def fit(self, examples: Iterable[LabelledEvent]) -> WordModel:
        counts: dict[str, Counter[str]] = {}
        docs: Counter[str] = Counter()
        for example in examples:
            docs[example.label] += 1
            counts.setdefault(example.label, Counter()).update(_words(example.event.text))
        self.labels = tuple(sorted(docs))
        self.vocab = frozenset(w for c in counts.values() for w in c)
        total_docs = sum(docs.values())
        self._log_prior = {label: math.log(docs[label] / total_docs) for label in self.labels}
        for label in self.labels:
            total = sum(counts[label].values()) + len(self.vocab)
            self._log_likelihood[label] = {w: math.log((counts[label][w] + 1) / total) for w in self.vocab}
        return self

    def scores(self, text: str) -> dict[str, float]:
        words = [w for w in _words(text) if w in self.vocab]
        # The mean log-likelihood per known word (times a sharpness): confident, not saturated, scores.
        scale = _SHARPNESS / max(1, len(words))
        logits = {
            label: self._log_prior[label] + scale * sum(self._log_likelihood[label][w] for w in words)
            for label in self.labels
        }
        top = max(logits.values())
        exp = {label: math.exp(v - top) for label, v in logits.items()}
        total = sum(exp.values())
        return {label: round(v / total, 6) for label, v in exp.items()}

    def predict(self, event: Event, predicted_at: datetime | None = None) -> Prediction:
        scores = self.scores(event.text)
        return Prediction(
            event_id=event.event_id,
            entity_id=event.entity_id,
            event_time=event.event_time,
            label=max(scores, key=scores.__getitem__),
            scores=scores,
            model=ModelRef(name=self.name, version=self.version),
            features={name: event.attributes.get(name) for name in self.feature_names},
            timings_ms=_TIMINGS,
            predicted_at=predicted_at or datetime.now(UTC),
            text_stats=text_stats(event.text, self.vocab),
        )


def version_metadata(model: WordModel, reference: Iterable[Prediction], **extra: Any) -> dict[str, Any]:
    """A ``metadata.json`` body with the fields the monitor reads (``labels``, ``feature_names``, ``reference``)."""
    return {
        "model": model.name,
        "version": model.version,
        "labels": list(model.labels),
        "feature_names": list(model.feature_names),
        "reference": [reference_row(p) for p in reference],
        **extra,
    }


def write_version_metadata(repository: Path, metadata: dict[str, Any]) -> Path:
    """Write ``<repository>/<model>/<version>/metadata.json`` atomically (rename into place)."""
    folder = repository / metadata["model"] / str(metadata["version"])
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".metadata-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(metadata, fh)
    path = folder / "metadata.json"
    os.replace(tmp, path)
    return path


def _words(text: str) -> list[str]:
    return text.lower().split()
