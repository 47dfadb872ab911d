"""The floor every driftloop package stands on: settings, logging, the health/metrics server, retries, paths.

Nothing here imports any other package of the project; everything else may import this.
"""
