"""PostgreSQL connections and versioned SQL migrations."""

from __future__ import annotations

import logging
import os
import select
import threading
from contextlib import contextmanager
from importlib import resources
from urllib.parse import urlparse, urlunparse

import psycopg2
from psycopg2 import extensions, sql

log = logging.getLogger(__name__)


def connect(dsn: str):
    """A new psycopg2 connection (callers close it)."""
    return psycopg2.connect(dsn, connect_timeout=5, application_name="cohorts")


POOL_SIZE = int(os.environ.get("COHORTS_DB_POOL_SIZE", "8"))


class _Pool:
    """Idle connections kept for reuse (at most POOL_SIZE); opened lazily, in the process that uses them."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.idle: list = []
        self.lock = threading.Lock()

    def get(self):
        with self.lock:
            while self.idle:
                conn = self.idle.pop()
                if _alive(conn):
                    return conn
                # One dead idle connection means the server went away: the others are dead too.
                log.warning("pool dsn_host=%s discarded=%s reason=server_closed", _host(self.dsn), len(self.idle) + 1)
                _close_all([conn, *self.idle])
                self.idle.clear()
        return connect(self.dsn)

    def put(self, conn, broken: bool) -> None:
        if not broken:
            with self.lock:
                if len(self.idle) < POOL_SIZE:
                    self.idle.append(conn)
                    return
        conn.close()

    def discard_idle(self) -> None:
        """Close every idle connection (after one failed: a server restart kills them all)."""
        with self.lock:
            idle, self.idle = self.idle, []
        _close_all(idle)


def _alive(conn) -> bool:
    """Whether an idle connection may be handed out, without a round trip.

    An idle connection never has anything to read: readable means the server closed it (a restart
    or pg_terminate_backend sends a FATAL and EOF), so it is discarded before any query fails on it.
    """
    if conn.closed:
        return False
    try:
        readable, _, _ = select.select([conn], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _close_all(conns) -> None:
    for conn in conns:
        try:
            conn.close()
        except psycopg2.Error:
            pass


def _host(dsn: str) -> str:
    return urlparse(dsn).hostname or "local"


_pools: dict[str, _Pool] = {}
_pools_pid = os.getpid()
_pools_lock = threading.Lock()


def _pool(dsn: str) -> _Pool:
    """This process's pool for dsn; a forked child (a Celery or gunicorn worker) starts its own."""
    global _pools_pid
    with _pools_lock:
        if _pools_pid != os.getpid():
            # Connections inherited across fork belong to the parent: forget them, never use them here.
            _pools.clear()
            _pools_pid = os.getpid()
        if dsn not in _pools:
            _pools[dsn] = _Pool(dsn)
        return _pools[dsn]


def borrow(dsn: str):
    """A pooled connection (give it back with give_back)."""
    return _pool(dsn).get()


def give_back(dsn: str, conn, broken: bool = False) -> None:
    """Return a pooled connection; a broken one, or one left inside a transaction, is closed instead.

    A connection the server dropped takes the pool's idle ones with it: they shared its server.
    """
    lost = bool(conn.closed)  # psycopg2 closes a connection whose server went away (not on a query error)
    pool = _pool(dsn)
    pool.put(conn, broken or lost or conn.get_transaction_status() != extensions.TRANSACTION_STATUS_IDLE)
    if lost:
        pool.discard_idle()


@contextmanager
def connection(dsn: str):
    """A pooled connection, committed on success, rolled back on error, always given back."""
    conn = borrow(dsn)
    broken = False
    try:
        yield conn
        conn.commit()
    except BaseException as exc:
        broken = isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError)
        if not conn.closed:
            try:
                conn.rollback()
            except psycopg2.Error:
                broken = True
        raise
    finally:
        give_back(dsn, conn, broken)


def ensure_database(dsn: str) -> None:
    """Create the database named in dsn if it does not exist yet."""
    url = urlparse(dsn)
    name = url.path.lstrip("/")
    admin = urlunparse(url._replace(path="/postgres"))
    conn = connect(admin)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                try:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    log.info("created database=%s", name)
                except psycopg2.errors.DuplicateDatabase:
                    pass
    finally:
        conn.close()


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every bundled migration, in order."""
    folder = resources.files("cohort_engine") / "migrations"
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


def migrate(dsn: str) -> list[str]:
    """Apply pending migrations in one transaction (all or none); return the versions applied."""
    ensure_database(dsn)
    applied_now = []
    with connection(dsn) as conn, conn.cursor() as cur:
        # One migrator at a time, even when several processes start together.
        cur.execute("SELECT pg_advisory_xact_lock(727274)")
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in cur.fetchall()}
        for version, text in migration_files():
            if version in done:
                continue
            cur.execute(text)
            cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied_now.append(version)
            log.info("applied migration=%s", version)
    return applied_now
