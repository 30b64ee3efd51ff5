"""The state shared by the API and the workers: settings, SQL models and sessions, artifacts.

``worker.store.rows`` is the one writer and loader of a job's audit rows, and
``worker.store.state`` holds every job and shard state transition. Torch-free: the API
process imports it.
"""

from worker.store.artifacts import ArtifactStore
from worker.store.db import make_engine, session_factory, session_scope
from worker.store.settings import Settings, get_settings

__all__ = [
    "ArtifactStore",
    "Settings",
    "get_settings",
    "make_engine",
    "session_factory",
    "session_scope",
]
