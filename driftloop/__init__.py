"""driftloop: settings, logging and the ``driftloop`` command line; the stages live in their own packages."""

__version__ = "0.1.0"
