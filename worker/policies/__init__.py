"""Gate policies shipped with camdrift (package data for
:func:`worker.results.gate.default_policy`)."""
