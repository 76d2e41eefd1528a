"""cohort_versions table."""

from __future__ import annotations

from psycopg2.extras import RealDictCursor

COLUMNS = ("id, cohort_id, definition_version, base_time, status, count, bitmap_key, error_code, error_message,"
           " created_at, finished_at")


def insert_succeeded(conn, cohort_id: int, definition_version: int, base_time, count: int, bitmap_key: str) -> dict:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "INSERT INTO cohort_versions (cohort_id, definition_version, base_time, status, count, bitmap_key,"
            " finished_at) VALUES (%s, %s, %s, 'succeed', %s, %s, now()) RETURNING " + COLUMNS,
            (cohort_id, definition_version, base_time, count, bitmap_key))
        return cur.fetchone()


def insert_failed(conn, cohort_id: int, definition_version: int, base_time, code: str, message: str) -> dict:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "INSERT INTO cohort_versions (cohort_id, definition_version, base_time, status, error_code,"
            " error_message, finished_at) VALUES (%s, %s, %s, 'failed', %s, %s, now()) RETURNING " + COLUMNS,
            (cohort_id, definition_version, base_time, code, message))
        return cur.fetchone()


def get(conn, version_id: int | None) -> dict | None:
    if version_id is None:
        return None
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT " + COLUMNS + " FROM cohort_versions WHERE id = %s", (version_id,))
        return cur.fetchone()


def bitmap_keys(conn, cohort_id: int) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT bitmap_key FROM cohort_versions WHERE cohort_id = %s AND bitmap_key IS NOT NULL", (cohort_id,))
        return [r[0] for r in cur.fetchall()]


def expire_beyond(conn, cohort_id: int, keep: int) -> list[str]:
    """Clear the bitmap keys of all but the `keep` newest versions and the published one; return the keys.

    Newest is the publish order (definition version, base time, id). The rows stay, with their count.
    """
    with conn.cursor() as cur:
        cur.execute(
            "WITH old AS (SELECT id, bitmap_key FROM cohort_versions WHERE cohort_id = %s AND bitmap_key IS NOT NULL"
            " ORDER BY definition_version DESC, base_time DESC, id DESC OFFSET %s)"
            " UPDATE cohort_versions v SET bitmap_key = NULL, expired_at = now() FROM old WHERE v.id = old.id"
            " AND v.id IS DISTINCT FROM (SELECT latest_version_id FROM cohorts WHERE id = %s)"
            " RETURNING old.bitmap_key", (cohort_id, max(keep, 0), cohort_id))
        return [r[0] for r in cur.fetchall()]
