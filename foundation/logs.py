"""Structured logging: human lines by default, one JSON object per line on request (``DRIFTLOOP_LOG__JSON_FORMAT``)."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from datetime import UTC, datetime

from foundation.settings import LogSettings

# Attributes every LogRecord has; anything else was passed with ``extra=`` and belongs in the JSON object.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class HumanFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``: the fields passed with ``extra=`` stay on the line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={_plain(v)}" for k, v in vars(record).items() if k not in _STANDARD)
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # a traceback stays below the line
        return f"{head} {fields}{sep}{tail}"


def _plain(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


def configure_logging(settings: LogSettings) -> None:
    """Send logs to stderr, as JSON lines or plain text, at ``settings.level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.json_format else HumanFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    # Feast logs every registry refresh at INFO and warns on each import that stream views are "alpha".
    logging.getLogger("feast").setLevel(max(root.level, logging.WARNING))
    warnings.filterwarnings("ignore", message="Stream feature views are experimental", category=RuntimeWarning)
