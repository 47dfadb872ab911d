"""The worker's startup objects, kept out of the garbage collector's full passes."""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect once, then move every object alive into the collector's permanent generation; return how many.

    Call it when a worker has imported and built what it keeps for its lifetime, before its loop. A worker holds
    ~400,000 such objects (faust, Feast, pandas, gRPC), and each full collection walked them all again: ~200 ms every
    few seconds under load, ~10 µs per event in the feature worker. Frozen, they are never walked again (nor freed:
    they live as long as the process anyway); what the worker allocates afterwards is collected as before.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("startup heap frozen: %d objects", frozen, extra={"objects": frozen})
    return frozen
