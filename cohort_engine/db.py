"""PostgreSQL connections and versioned SQL migrations."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from importlib import resources
from urllib.parse import urlparse, urlunparse

import psycopg2
from psycopg2 import sql

log = logging.getLogger(__name__)


def connect(dsn: str):
    """A new psycopg2 connection (callers close it)."""
    return psycopg2.connect(dsn, connect_timeout=5, application_name="cohorts")


@contextmanager
def connection(dsn: str):
    """A connection committed on success, rolled back on error, always closed."""
    conn = connect(dsn)
    try:
        yield conn
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()


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
