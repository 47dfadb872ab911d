"""Bounded shutdown: a worker that got SIGTERM exits within its grace period, whatever it is waiting on."""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger(__name__)


def exit_after(grace_s: float, what: str) -> threading.Thread:
    """Unless the process ended by then, exit it ``grace_s`` from now (Kafka, Feast or Triton unreachable, so leaving
    the group or flushing cannot finish). Nothing uncommitted is lost: it is redelivered to the next member."""

    def watchdog() -> None:
        time.sleep(grace_s)
        log.error(
            "%s did not stop within %.0fs of the signal; exiting (uncommitted records are redelivered)", what, grace_s
        )
        logging.shutdown()
        os._exit(1)

    thread = threading.Thread(target=watchdog, name="shutdown-watchdog", daemon=True)
    thread.start()
    return thread
