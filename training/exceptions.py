"""Errors of the training stage.

TrainingError
 ├── DatasetError        no usable training data: empty window, too few samples, unreadable topic
 ├── ExportError         a version folder cannot be built, or it does not reproduce the trained model
 ├── PublishError        the repository or Triton cannot take a version (unreachable, inconsistent labels)
 │    └── VersionRejected  it failed to load or to smoke-infer: removed, never announced as candidate
 └── RegistryError       the models topic cannot be read or written, or a promotion/rollback makes no sense
"""


class TrainingError(Exception):
    """Root of every error raised by ``training``."""


class DatasetError(TrainingError):
    """The data window holds no usable training set."""


class ExportError(TrainingError):
    """A version folder could not be written or does not match the model it was exported from."""


class PublishError(TrainingError):
    """The model repository or the Triton server cannot take the version."""


class VersionRejected(PublishError):
    """The version did not load or did not answer its smoke requests; it was removed and the champion kept."""


class RegistryError(TrainingError):
    """The models topic is unreadable or unwritable, or a state change is invalid (e.g. promote without candidate)."""
