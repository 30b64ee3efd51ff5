"""Gate policies shipped with camdrift (package data for :func:`worker.gate.default_policy`)."""
