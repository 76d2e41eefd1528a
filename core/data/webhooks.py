"""webhooks table: the URLs each project (or one of its cohorts) has called on its events (docs/webhooks.md)."""

from __future__ import annotations

from psycopg2.extras import RealDictCursor

EVENTS = ("version.published", "job.failed")
COLUMNS = "id, project_id, cohort_id, url, secret, events, active, created_at, updated_at"
EDITABLE = ("url", "secret", "events", "active", "cohort_id")


def insert(conn, project_id: int, url: str, secret: str, *, cohort_id=None, events=EVENTS, active=True) -> dict:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("INSERT INTO webhooks (project_id, cohort_id, url, secret, events, active)"
                    " VALUES (%s, %s, %s, %s, %s, %s) RETURNING " + COLUMNS,
                    (project_id, cohort_id, url, secret, list(events), active))
        return cur.fetchone()


def get(conn, project_id: int, webhook_id: int, *, lock: bool = False) -> dict | None:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT " + COLUMNS + " FROM webhooks WHERE id = %s AND project_id = %s"
                    + (" FOR UPDATE" if lock else ""), (webhook_id, project_id))
        return cur.fetchone()


def get_any(conn, webhook_id: int) -> dict | None:
    """A webhook of any project (the delivery task's read; it checks the project's allowlist itself)."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT " + COLUMNS + " FROM webhooks WHERE id = %s", (webhook_id,))
        return cur.fetchone()


def list_page(conn, project_id: int, *, limit: int, offset: int) -> tuple[int, list[dict]]:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT count(*) AS n FROM webhooks WHERE project_id = %s", (project_id,))
        total = cur.fetchone()["n"]
        cur.execute("SELECT " + COLUMNS + " FROM webhooks WHERE project_id = %s ORDER BY id LIMIT %s OFFSET %s",
                    (project_id, limit, offset))
        return total, cur.fetchall()


def update(conn, webhook_id: int, **fields) -> dict:
    """Set the given EDITABLE fields."""
    names = [name for name in EDITABLE if name in fields]
    values = [list(fields[n]) if n == "events" else fields[n] for n in names]
    assignments = "".join(f"{name} = %s, " for name in names)
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"UPDATE webhooks SET {assignments}updated_at = now() WHERE id = %s RETURNING " + COLUMNS,
                    (*values, webhook_id))
        return cur.fetchone()


def delete(conn, project_id: int, webhook_id: int) -> bool:
    with conn.cursor() as cur:
        cur.execute("DELETE FROM webhooks WHERE id = %s AND project_id = %s", (webhook_id, project_id))
        return cur.rowcount == 1


def subscribed(conn, project_id: int, cohort_id: int, event: str) -> list[dict]:
    """The active webhooks of the project (project-wide, or of this cohort) that take this event."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT " + COLUMNS + " FROM webhooks WHERE project_id = %s AND active"
                    " AND (cohort_id IS NULL OR cohort_id = %s) AND %s = ANY(events) ORDER BY id",
                    (project_id, cohort_id, event))
        return cur.fetchall()
