"""The embedded backend: Parquet parts read with DuckDB (store.py), leaves compiled to SQL (compiler.py)."""

from __future__ import annotations

from .. import Backend, ProjectInfo, register
from .compiler import EmbeddedSession
from .store import EventStore, IngestError, Snapshot

__all__ = ["EmbeddedBackend", "EmbeddedSession", "EventStore", "IngestError", "Snapshot"]


class EmbeddedBackend(Backend):
    """A project's own event store under config.store_dir/<project>."""

    kind = "embedded"

    def __init__(self, project: ProjectInfo, config):
        super().__init__(project, config)
        self.store = EventStore(config.store_dir, project.name, config.duckdb_limits())

    def open(self) -> EmbeddedSession:
        return EmbeddedSession(self.store.snapshot(), self.config.planner)


register(EmbeddedBackend.kind, EmbeddedBackend)
