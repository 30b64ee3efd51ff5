"""Compute side of camdrift: attribution engine, drift metrics, statistics, reports, tasks."""
