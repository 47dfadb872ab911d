"""One module per noun of the ``driftloop`` command line."""
