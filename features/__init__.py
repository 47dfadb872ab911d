"""driftloop's Feast feature repository and the functions that push and read its features.

The definitions (``features.definitions``) are what ``feast apply`` registers; the rest of this package is
listed in ``.feastignore``.
"""

from features.exceptions import FeatureRowsInvalid, FeaturesError, FeatureStoreConfigError, FeatureStoreNotReady
from features.store import (
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
