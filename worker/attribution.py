"""Public Python API path kept for users' scripts: the engine lives in :mod:`worker.engine`."""

from worker.engine.attribution import Attribution, attribute, attribute_batch, cam_from, finish_maps

__all__ = ["Attribution", "attribute", "attribute_batch", "cam_from", "finish_maps"]
