"""The attribution engine: the only torch code of ``worker`` (models, maps, metrics, audits)."""
