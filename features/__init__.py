"""driftloop's Feast feature repository and the functions that push and read its features.

The definitions (``features.definitions``) are what ``feast apply`` registers; the rest of this package is
listed in ``.feastignore``. Names are imported on first use: the Feast SDK (13 to 16 s and ~850 MB to import) is
loaded by ``features.store`` only; the inference worker reads the online store through ``features.online_read``
without it.
"""

from __future__ import annotations

import os
import sys
import types
from typing import TYPE_CHECKING

# Importing feast imports feast.metrics, which sets PROMETHEUS_MULTIPROC_DIR and so switches prometheus_client into
# multi-process mode for the whole process: every registry (the workers', the monitor's) would then share values by
# metric name through files in a temp folder. driftloop's processes keep their own metrics, so prometheus_client is
# imported first (its value class is chosen then: every import of feast in driftloop goes through this package),
# and features.store removes the variables feast set again (restore_environment), so that processes started from
# this one do not inherit them.
_PROMETHEUS_ENV = {name: os.environ.get(name) for name in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")}
import prometheus_client  # noqa: E402, F401 - before feast (see above)

from foundation.lazy import lazy_exports  # noqa: E402


def _defer_feasts_torch() -> None:
    """Feast imports torch as soon as it is imported (``feast.torch_wrapper``), for the ``to_tensor`` of its results
    only: 3 to 5 s and ~500 MB that a feature worker, which never asks for a tensor, paid at every start. Its
    wrapper is replaced by one with the same functions that imports torch when one is asked for. (Before feast is
    imported: every import of feast in driftloop goes through this package.)"""
    name = "feast.torch_wrapper"
    if name in sys.modules:
        return
    wrapper = types.ModuleType(name, "feast.torch_wrapper, importing torch on first use (see features/__init__.py)")

    def get_torch() -> types.ModuleType:
        import torch

        return torch

    wrapper.get_torch = get_torch  # type: ignore[attr-defined]
    sys.modules[name] = wrapper


_defer_feasts_torch()


def restore_environment() -> None:
    """Put back the prometheus variables as they were before feast was imported (see above)."""
    for name, value in _PROMETHEUS_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


_EXPORTS = {
    "FeatureRowsInvalid": "features.exceptions",
    "FeatureStoreConfigError": "features.exceptions",
    "FeatureStoreNotReady": "features.exceptions",
    "FeaturesError": "features.exceptions",
    "OnlineReader": "features.online_read",
    "apply_repo": "features.store",
    "check_health": "features.store",
    "historical_features": "features.store",
    "online_features": "features.store",
    "open_reader": "features.online_read",
    "open_store": "features.store",
    "push_stream_features": "features.store",
    "repo_config": "features.store",
}

__all__ = [
    "FeatureRowsInvalid",
    "FeatureStoreConfigError",
    "FeatureStoreNotReady",
    "FeaturesError",
    "OnlineReader",
    "apply_repo",
    "check_health",
    "historical_features",
    "online_features",
    "open_reader",
    "open_store",
    "push_stream_features",
    "repo_config",
]

if TYPE_CHECKING:
    from features.exceptions import FeatureRowsInvalid, FeaturesError, FeatureStoreConfigError, FeatureStoreNotReady
    from features.online_read import OnlineReader, open_reader
    from features.store import (
        apply_repo,
        check_health,
        historical_features,
        online_features,
        open_store,
        push_stream_features,
        repo_config,
    )

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
