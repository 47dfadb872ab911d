"""driftloop's Feast feature repository and the functions that push and read its features.

The definitions (``features.definitions``) are what ``feast apply`` registers; the rest of this package is
listed in ``.feastignore``.
"""

import os

# Importing feast imports feast.metrics, which sets PROMETHEUS_MULTIPROC_DIR and so switches prometheus_client into
# multi-process mode for the whole process: every registry (the workers', the monitor's) would then share values by
# metric name through files in a temp folder. driftloop's processes keep their own metrics, so prometheus_client is
# imported first (its value class is chosen then), and the variables feast set are removed again, so that processes
# started from this one do not inherit them. This package is the only way into feast in driftloop.
_PROMETHEUS_ENV = {name: os.environ.get(name) for name in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")}
import prometheus_client  # noqa: E402, F401 - before feast (see above)

# isort: split
import feast  # noqa: E402, F401

for _name, _value in _PROMETHEUS_ENV.items():
    if _value is None:
        os.environ.pop(_name, None)
del _name, _value

from features.exceptions import (  # noqa: E402 - after the environment fix above
    FeatureRowsInvalid,
    FeaturesError,
    FeatureStoreConfigError,
    FeatureStoreNotReady,
)
from features.store import (  # noqa: E402
    apply_repo,
    check_health,
    historical_features,
    online_features,
    open_store,
    push_stream_features,
    repo_config,
)

__all__ = [
    "FeatureRowsInvalid",
    "FeatureStoreConfigError",
    "FeatureStoreNotReady",
    "FeaturesError",
    "apply_repo",
    "check_health",
    "historical_features",
    "online_features",
    "open_store",
    "push_stream_features",
    "repo_config",
]
