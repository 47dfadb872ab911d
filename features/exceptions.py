"""Errors of the features package.

FeaturesError
 ├── FeatureStoreConfigError   settings name a store driftloop cannot build
 ├── FeatureStoreNotReady      registry or online store missing or unreadable
 └── FeatureRowsInvalid        rows or an entity frame do not match the feature schema
"""


class FeaturesError(Exception):
    """Root of every error raised by ``features``."""


class FeatureStoreConfigError(FeaturesError):
    """The settings name an online store driftloop cannot configure."""


class FeatureStoreNotReady(FeaturesError):
    """The registry or the online store is missing or cannot be read."""


class FeatureRowsInvalid(FeaturesError):
    """Rows to push, or an entity frame to join, lack or add columns."""
