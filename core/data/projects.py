"""projects table."""

from __future__ import annotations

import hashlib

from psycopg2.extras import RealDictCursor

# What a request's project (g.project) and the workers see of a project row.
COLUMNS = "id, name, timezone, daily_refresh_time, app_key"


def token_hash(token: str) -> str:
    """The stored form of an API token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def by_token(conn, token: str) -> dict | None:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM projects WHERE api_token_hash = %s", (token_hash(token),))
        return cur.fetchone()


def by_name(conn, name: str) -> dict | None:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM projects WHERE name = %s", (name,))
        return cur.fetchone()


def by_id(conn, project_id: int) -> dict | None:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM projects WHERE id = %s", (project_id,))
        return cur.fetchone()


def set_token(conn, name: str, token: str) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE projects SET api_token_hash = %s WHERE name = %s", (token_hash(token), name))


def set_daily_refresh_time(conn, project_id: int, hhmm: str) -> None:
    """Set the project's daily refresh time (local "HH:MM", checked by core.crons.parse_daily_time)."""
    with conn.cursor() as cur:
        cur.execute("UPDATE projects SET daily_refresh_time = %s WHERE id = %s", (hhmm, project_id))


def set_app_key(conn, project_id: int, app_key: str | None) -> None:
    """Set (None: clear) the other name the project answers to in vendor headers (Ark's appKey).

    Raises psycopg2.errors.UniqueViolation when another project has that app key.
    """
    with conn.cursor() as cur:
        cur.execute("UPDATE projects SET app_key = %s WHERE id = %s", (app_key, project_id))


def listing(conn) -> list[dict]:
    """Every project, by id."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM projects ORDER BY id")
        return cur.fetchall()
