"""Public Python API path kept for users' scripts: the engine lives in :mod:`worker.engine`."""

from worker.engine.metrics import degenerate, drift_metrics

__all__ = ["degenerate", "drift_metrics"]
