"""Offline side of camdrift: data, phantoms, model zoo, two-phase training, checkpoints.

Importing this package must stay free of torch so the API process can use the torch-free
modules (``training.checkpoint_format``).
"""

__version__ = "0.1.0"
