"""Per-request PostgreSQL connection (borrowed from the pool on first use, given back at teardown), Redis."""

from __future__ import annotations

import time

import redis as redis_lib
from flask import current_app, g, request

from cohort_engine import db as engine_db


def settings():
    return current_app.config["SETTINGS"]


def get_db():
    """This request's connection; committed explicitly by views, rolled back and closed at teardown."""
    if "db" not in g:
        conn = engine_db.borrow(settings().engine.database_url)
        # Reads need no transaction: autocommit saves the BEGIN and ROLLBACK round trips.
        conn.autocommit = request.method in ("GET", "HEAD")
        g.db = conn
    return g.db


def close_db(exc=None) -> None:
    """Roll back whatever the view did not commit and give the connection back to the pool."""
    conn = g.pop("db", None)
    if conn is None:
        return
    broken = False
    try:
        if not conn.closed:
            conn.rollback()
            conn.autocommit = False
    except Exception:
        broken = True
    engine_db.give_back(settings().engine.database_url, conn, broken)


def get_redis():
    """A Redis client for cohort bitmaps (connection pool kept on the app)."""
    client = current_app.extensions.get("cohort_redis")
    if client is None:
        client = redis_lib.Redis.from_url(settings().engine.redis_url, socket_timeout=5, socket_connect_timeout=2)
        current_app.extensions["cohort_redis"] = client
    return client


def get_broker_redis():
    """A Redis client on the broker's database (for /healthz's check of queued jobs)."""
    client = current_app.extensions.get("broker_redis")
    if client is None:
        client = redis_lib.Redis.from_url(settings().broker_url, socket_timeout=5, socket_connect_timeout=2)
        current_app.extensions["broker_redis"] = client
    return client


BROKER_OK_SECONDS = 1.0


def check_broker() -> None:
    """Raise redis.ConnectionError if the broker does not answer, before anything is written.

    A good answer is trusted for a second: under load that saves a round trip per request, and a
    broker lost within that second only delays the job (the send fails and the sweeper resends).
    """
    if not settings().broker_check or not settings().broker_url.startswith("redis"):
        return
    state = current_app.extensions.setdefault("broker_check", {"client": None, "ok_until": 0.0})
    if state["ok_until"] > time.monotonic():
        return
    if state["client"] is None:
        state["client"] = redis_lib.Redis.from_url(settings().broker_url, socket_timeout=2, socket_connect_timeout=2)
    state["client"].ping()
    state["ok_until"] = time.monotonic() + BROKER_OK_SECONDS


def connection_factory():
    """A context-managed connection for work after the request's commit (enqueue bookkeeping)."""
    dsn = settings().engine.database_url
    return lambda: engine_db.connection(dsn)


def init_app(app) -> None:
    app.teardown_appcontext(close_db)
