"""webhook_deliveries table: one row per event and webhook, with every attempt (docs/webhooks.md)."""

from __future__ import annotations

from psycopg2.extras import Json, RealDictCursor

COLUMNS = ("id, webhook_id, event, cohort_id, version_id, job_id, body, status, attempts, status_code, error,"
           " history, created_at, next_attempt_at, finished_at")


def next_id(conn) -> int:
    """A delivery id taken before its row is written (the signed body names it)."""
    with conn.cursor() as cur:
        cur.execute("SELECT nextval(pg_get_serial_sequence('webhook_deliveries', 'id'))")
        return cur.fetchone()[0]


def insert_with_id(conn, delivery_id: int, webhook_id: int, event: str, body: str, *, cohort_id=None,
                   version_id=None, job_id=None) -> None:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO webhook_deliveries (id, webhook_id, event, cohort_id, version_id, job_id, body)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (delivery_id, webhook_id, event, cohort_id, version_id, job_id, body))


def claim(conn, delivery_id: int) -> dict | None:
    """Lock a pending delivery for one attempt (None if it is finished, gone, or another try holds it)."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT " + COLUMNS + " FROM webhook_deliveries WHERE id = %s AND status = 'pending'"
                    " FOR UPDATE SKIP LOCKED", (delivery_id,))
        return cur.fetchone()


def record_attempt(conn, delivery_id: int, attempt: dict, status: str, retry_in: float | None) -> dict:
    """Append one attempt ({at, status_code, error, seconds}); status pending (retry in retry_in s) or final."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, status = %s, status_code = %s, error = %s,"
            " history = history || jsonb_build_array(%s::jsonb || jsonb_build_object('attempt', attempts + 1)),"
            " next_attempt_at = now() + make_interval(secs => %s),"
            " finished_at = CASE WHEN %s = 'pending' THEN NULL ELSE now() END"
            " WHERE id = %s RETURNING " + COLUMNS,
            (status, attempt.get("status_code"), attempt.get("error"), Json(attempt), retry_in or 0, status,
             delivery_id))
        return cur.fetchone()


def list_page(conn, webhook_id: int, *, status=None, limit: int, offset: int) -> tuple[int, list[dict]]:
    where, params = "webhook_id = %s", [webhook_id]
    if status:
        where += " AND status = %s"
        params.append(status)
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT count(*) AS n FROM webhook_deliveries WHERE {where}", params)
        total = cur.fetchone()["n"]
        cur.execute("SELECT " + COLUMNS + f" FROM webhook_deliveries WHERE {where} ORDER BY id DESC LIMIT %s OFFSET %s",
                    (*params, limit, offset))
        return total, cur.fetchall()


def overdue(conn, older_than_seconds: float, limit: int = 1000) -> list[int]:
    """Pending deliveries whose next attempt is older_than_seconds overdue: their message was lost (or never sent)."""
    with conn.cursor() as cur:
        cur.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE id IN ("
                    " SELECT id FROM webhook_deliveries WHERE status = 'pending'"
                    " AND next_attempt_at < now() - make_interval(secs => %s) ORDER BY id LIMIT %s"
                    " FOR UPDATE SKIP LOCKED) RETURNING id", (older_than_seconds, limit))
        return [row[0] for row in cur.fetchall()]
