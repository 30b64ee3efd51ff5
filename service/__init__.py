"""Serving side of camdrift: REST API, SQL store, settings and the ``camdrift`` command."""
