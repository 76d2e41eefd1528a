"""One project's engine: its time zone, rule backend, user-key dictionary and stored cohorts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

from pyroaring import BitMap

from . import bitmaps, db, leafcache
from .backends import Backend, ProjectInfo, Session, open_backend
from .config import EngineConfig
from .dictionary import MISSING, UserKeyDictionary
from .errors import EngineError
from .evaluate import EvalContext, Result, evaluate
from .tags import TagResult, compute_tag
from .timewin import parse_base_time


class UnknownProject(LookupError):
    """No project of that name."""


class ProjectEngine:
    """Everything the engine does for one project; each call borrows a pooled connection and gives it back."""

    def __init__(self, config: EngineConfig, project: str, *, project_id: int | None = None,
                 timezone: str | None = None, backend: dict | str | None = None):
        """The engine of the named project; give project_id, timezone (and backend) when the caller has them."""
        self.config = config
        if project_id is None or timezone is None:
            with db.connection(config.database_url) as conn, conn.cursor() as cur:
                cur.execute("SELECT id, timezone, backend FROM projects WHERE name = %s", (project,))
                row = cur.fetchone()
            if row is None:
                raise UnknownProject(f"project {project!r} does not exist")
            project_id, timezone, backend = row
        elif backend is None:
            with db.connection(config.database_url) as conn, conn.cursor() as cur:
                cur.execute("SELECT backend FROM projects WHERE id = %s", (project_id,))
                row = cur.fetchone()
            backend = row[0] if row else None
        if isinstance(backend, str):
            backend = {"kind": backend}
        self.name = project
        self.project_id, tzname = project_id, timezone
        self.tz = ZoneInfo(tzname)
        self.info = ProjectInfo(project_id, project, tzname, dict(backend or {"kind": "embedded"}))
        self.backend: Backend = open_backend(self.info, config)

    @property
    def store(self):
        """The embedded event store (ingest, snapshots); EngineError `unsupported` for other backends."""
        store = getattr(self.backend, "store", None)
        if store is None:
            raise EngineError("unsupported", f"project {self.name!r} uses backend {self.info.kind!r}, "
                                             "which has no embedded event store")
        return store

    @property
    def leaf_cache(self) -> leafcache.LeafCache | None:
        """This process's leaf-result cache (config.leaf_cache_bytes; None when 0)."""
        return leafcache.shared(self.config.leaf_cache_bytes) if self.config.leaf_cache_bytes > 0 else None

    def open_session(self) -> Session:
        """A backend Session over the data as it is now; close it when done."""
        return self.backend.open()

    def encode(self, keys: list[str], create: bool = True):
        """uint32 ids for keys (new ids for unseen keys unless create is False)."""
        with db.connection(self.config.database_url) as conn:
            return UserKeyDictionary(conn, self.project_id).encode(keys, create=create)

    def lookup(self, key: str) -> int | None:
        """The id of one user key, or None."""
        ids = self.encode([key], create=False)
        return None if ids[0] == MISSING else int(ids[0])

    def iter_keys(self, bitmap: BitMap, batch: int = 20000) -> Iterator[str]:
        """Stream the user keys of a bitmap, decoding a batch per query."""
        conn = db.connect(self.config.database_url)
        try:
            yield from bitmaps.iter_members(bitmap, UserKeyDictionary(conn, self.project_id), batch)
        finally:
            conn.close()

    def ingest_events(self, path, **columns) -> int:
        return self.store.ingest_events(path, self.encode, self.tz, **columns)

    def ingest_users(self, path, **columns) -> int:
        return self.store.ingest_users(path, self.encode, self.tz, **columns)

    def compute(self, tree: dict, base_time=None, load_cohort=None, progress=None, load_tag=None,
                load_import=None, on_cancel=None) -> Result:
        """Evaluate a validated canonical tree at base_time (default: now).

        on_cancel(callback), when given, registers the session's cancel (a remote backend's running
        queries) to be called if the job is cancelled meanwhile.
        """
        session = self.open_session()
        if on_cancel is not None and hasattr(session, "cancel"):
            on_cancel(session.cancel)
        try:
            return evaluate(tree, self._context(session, base_time, load_cohort, progress, load_tag, load_import))
        finally:
            session.close()

    def compute_tag(self, definition: dict, base_time=None, load_cohort=None, progress=None, load_tag=None,
                    load_import=None, load_import_tag=None, on_cancel=None) -> TagResult:
        """Each user's value of a parsed tag definition at base_time (default: now).

        load_import reads the import leaves of its trees (as in compute); load_import_tag an import
        tag's uploaded values; on_cancel as compute's.
        """
        session = self.open_session()
        if on_cancel is not None and hasattr(session, "cancel"):
            on_cancel(session.cancel)
        try:
            ctx = self._context(session, base_time, load_cohort, progress, load_tag, load_import)
            return compute_tag(definition, ctx, load_import_tag=load_import_tag)
        finally:
            session.close()

    def _context(self, session, base_time, load_cohort, progress, load_tag, load_import=None) -> EvalContext:
        return EvalContext(session=session, tz=self.tz, base_time=parse_base_time(base_time, self.tz),
                           encode_keys=self.encode, load_cohort=load_cohort, progress=progress, load_tag=load_tag,
                           load_import=load_import, leaf_cache=self.leaf_cache, project_id=self.project_id)

    def base_time(self, value) -> datetime:
        return parse_base_time(value, self.tz)
