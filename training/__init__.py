"""The training stage: data sets from labelled events and Feast, fine-tuning, evaluation, export and publishing.

Upstream stages (``streams``, ``features``) are imported, never the other way round. The files every model
version carries (Triton's ``model.py`` and the ``runtime`` it calls) live in :mod:`training.servable`.

Names are imported on first use: ``from training.registry import ModelState`` (what the inference worker needs)
does not pay for torch, transformers and pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foundation.lazy import lazy_exports

_EXPORTS = {
    "DataWindow": "training.dataset",
    "Dataset": "training.dataset",
    "attach_features": "training.dataset",
    "bootstrap_dataset": "training.dataset",
    "join_labels": "training.dataset",
    "load_dataset": "training.dataset",
    "read_labelled_events": "training.dataset",
    "split_by_time": "training.dataset",
    "Metrics": "training.evaluation",
    "evaluate": "training.evaluation",
    "evaluate_version": "training.evaluation",
    "DatasetError": "training.exceptions",
    "ExportError": "training.exceptions",
    "PublishError": "training.exceptions",
    "RegistryError": "training.exceptions",
    "TrainingError": "training.exceptions",
    "VersionRejected": "training.exceptions",
    "VersionMetadata": "training.export",
    "export_version": "training.export",
    "read_metadata": "training.export",
    "BuiltVersion": "training.pipeline",
    "PROMOTE_POLICIES": "training.pipeline",
    "build_version": "training.pipeline",
    "TrainingRun": "training.pipeline",
    "train_version": "training.pipeline",
    "Publication": "training.publish",
    "Publisher": "training.publish",
    "promote": "training.publish",
    "withdraw": "training.publish",
    "publish_version": "training.publish",
    "rollback": "training.publish",
    "ModelState": "training.registry",
    "announce": "training.registry",
    "read_state": "training.registry",
    "read_states": "training.registry",
    "ModelRepository": "training.repository",
    "render_config": "training.repository",
    "FitOptions": "training.trainer",
    "FitReport": "training.trainer",
    "fit": "training.trainer",
}

__all__ = [
    "BuiltVersion",
    "DataWindow",
    "Dataset",
    "DatasetError",
    "ExportError",
    "FitOptions",
    "FitReport",
    "Metrics",
    "ModelRepository",
    "ModelState",
    "PROMOTE_POLICIES",
    "Publication",
    "PublishError",
    "Publisher",
    "RegistryError",
    "TrainingError",
    "TrainingRun",
    "VersionMetadata",
    "VersionRejected",
    "announce",
    "attach_features",
    "bootstrap_dataset",
    "build_version",
    "evaluate",
    "evaluate_version",
    "export_version",
    "fit",
    "join_labels",
    "load_dataset",
    "promote",
    "publish_version",
    "read_labelled_events",
    "read_metadata",
    "read_state",
    "read_states",
    "render_config",
    "rollback",
    "split_by_time",
    "train_version",
    "withdraw",
]

if TYPE_CHECKING:
    from training.dataset import (
        Dataset,
        DataWindow,
        attach_features,
        bootstrap_dataset,
        join_labels,
        load_dataset,
        read_labelled_events,
        split_by_time,
    )
    from training.evaluation import Metrics, evaluate, evaluate_version
    from training.exceptions import (
        DatasetError,
        ExportError,
        PublishError,
        RegistryError,
        TrainingError,
        VersionRejected,
    )
    from training.export import VersionMetadata, export_version, read_metadata
    from training.pipeline import PROMOTE_POLICIES, BuiltVersion, TrainingRun, build_version, train_version
    from training.publish import Publication, Publisher, promote, publish_version, rollback, withdraw
    from training.registry import ModelState, announce, read_state, read_states
    from training.repository import ModelRepository, render_config
    from training.trainer import FitOptions, FitReport, fit


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
