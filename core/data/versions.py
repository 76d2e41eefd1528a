"""cohort_versions table."""

from __future__ import annotations

import psycopg2
from psycopg2.extras import Json, RealDictCursor

COLUMNS = ("id, cohort_id, definition_version, base_time, status, count, bitmap_key, error_code, error_message,"
           " created_at, finished_at, job_id, started_at, timings, previous_version_id, entered_count, left_count,"
           " expired_at")


def insert_succeeded(conn, cohort_id: int, definition_version: int, base_time, count: int, bitmap_key: str,
                     tag_meta: dict | None = None, *, job: dict | None = None, timings: list | None = None,
                     payload: bytes | None = None, change: tuple | None = None) -> dict:
    """A computed version (a tag's with its meta), with the job that wrote it (its id and first start) and its
    per-leaf timings.

    payload: its durable copy; change: (previous_version_id, entered, left) against the version
    published before (set_change's fields), when the publisher knows them already: one statement.
    """
    previous, entered, left = change or (None, None, None)
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "INSERT INTO cohort_versions (cohort_id, definition_version, base_time, status, count, bitmap_key,"
            " finished_at, tag_meta, job_id, started_at, timings, bitmap, previous_version_id, entered_count,"
            " left_count) VALUES (%s, %s, %s, 'succeed', %s, %s, now(), %s, %s, %s, %s, %s, %s, %s, %s)"
            " RETURNING " + COLUMNS,
            (cohort_id, definition_version, base_time, count, bitmap_key, Json(tag_meta) if tag_meta else None,
             *_job_fields(job), None if timings is None else Json(timings),
             None if payload is None else psycopg2.Binary(payload), previous, entered, left))
        return cur.fetchone()


def published_tag(conn, cohort_id: int) -> dict | None:
    """The published version of a tag with its meta (layout, distribution), or None."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT " + ", ".join("v." + c.strip() for c in COLUMNS.split(",")) + ", v.tag_meta"
                    " FROM cohorts c JOIN cohort_versions v ON v.id = c.latest_version_id"
                    " WHERE c.id = %s AND v.tag_meta IS NOT NULL", (cohort_id,))
        return cur.fetchone()


def payload(conn, version_id: int) -> bytes | None:
    """A version's whole durable payload (bitmap or tag column), or None when it has none (expired)."""
    with conn.cursor() as cur:
        cur.execute("SELECT bitmap FROM cohort_versions WHERE id = %s AND bitmap IS NOT NULL", (version_id,))
        row = cur.fetchone()
    return None if row is None else bytes(row[0])


def payload_range(conn, version_id: int, offset: int, length: int) -> bytes | None:
    """length bytes of a version's durable payload from offset (0-based): EXTERNAL storage reads only those chunks."""
    with conn.cursor() as cur:
        cur.execute("SELECT substring(bitmap FROM %s FOR %s) FROM cohort_versions WHERE id = %s AND bitmap IS NOT NULL",
                    (offset + 1, length, version_id))
        row = cur.fetchone()
    return None if row is None else bytes(row[0])


def insert_failed(conn, cohort_id: int, definition_version: int, base_time, code: str, message: str, *,
                  job: dict | None = None) -> dict:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "INSERT INTO cohort_versions (cohort_id, definition_version, base_time, status, error_code,"
            " error_message, finished_at, job_id, started_at) VALUES (%s, %s, %s, 'failed', %s, %s, now(), %s, %s)"
            " RETURNING " + COLUMNS,
            (cohort_id, definition_version, base_time, code, message, *_job_fields(job)))
        return cur.fetchone()


def _job_fields(job: dict | None) -> tuple:
    return (None, None) if job is None else (job["id"], job.get("started_at"))


def set_change(conn, version_id: int, previous_version_id: int | None, entered: int, left: int) -> None:
    """Record who entered and left against the version published before (in the publishing transaction)."""
    with conn.cursor() as cur:
        cur.execute("UPDATE cohort_versions SET previous_version_id = %s, entered_count = %s, left_count = %s"
                    " WHERE id = %s", (previous_version_id, entered, left, version_id))


def list_page(conn, cohort_id: int, *, limit: int, offset: int) -> tuple[int, list[dict]]:
    """(total, a page of the cohort's version rows, newest first in publish order)."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT count(*) AS n FROM cohort_versions WHERE cohort_id = %s", (cohort_id,))
        total = cur.fetchone()["n"]
        cur.execute("SELECT " + COLUMNS + " FROM cohort_versions WHERE cohort_id = %s"
                    " ORDER BY definition_version DESC, base_time DESC, id DESC LIMIT %s OFFSET %s",
                    (cohort_id, limit, offset))
        return total, cur.fetchall()


def of_cohort(conn, cohort_id: int, version_id: int) -> dict | None:
    """One version row of that cohort (None for another cohort's version)."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT " + COLUMNS + " FROM cohort_versions WHERE id = %s AND cohort_id = %s",
                    (version_id, cohort_id))
        return cur.fetchone()


def meta_of(conn, version_id: int) -> dict | None:
    """A tag version's meta (layout, distribution), kept with the row even after its payload expired."""
    with conn.cursor() as cur:
        cur.execute("SELECT tag_meta FROM cohort_versions WHERE id = %s", (version_id,))
        row = cur.fetchone()
    return None if row is None else row[0]


def bitmap_of(conn, version_id: int) -> bytes | None:
    """The durable copy of one version's bitmap, or None if it has none (failed, or expired)."""
    with conn.cursor() as cur:
        cur.execute("SELECT bitmap FROM cohort_versions WHERE id = %s AND bitmap IS NOT NULL", (version_id,))
        row = cur.fetchone()
    return None if row is None else bytes(row[0])


def get(conn, version_id: int | None) -> dict | None:
    if version_id is None:
        return None
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT " + COLUMNS + " FROM cohort_versions WHERE id = %s", (version_id,))
        return cur.fetchone()


def by_ids(conn, version_ids) -> dict[int, dict]:
    """{id: version row} of the given versions (those that exist)."""
    ids = list(version_ids)
    if not ids:
        return {}
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT " + COLUMNS + " FROM cohort_versions WHERE id = ANY(%s)", (ids,))
        return {row["id"]: row for row in cur.fetchall()}


def bitmap_keys(conn, cohort_id: int) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT bitmap_key FROM cohort_versions WHERE cohort_id = %s AND bitmap_key IS NOT NULL", (cohort_id,))
        return [r[0] for r in cur.fetchall()]


def expire_beyond(conn, cohort_id: int, keep: int) -> list[str]:
    """Clear the bitmaps (Redis key and durable copy) of all but the `keep` newest and the published version.

    Returns the Redis keys to delete. Newest is the publish order (definition version, base time, id). The rows stay, with their count.
    """
    with conn.cursor() as cur:
        cur.execute(
            "WITH old AS (SELECT id, bitmap_key FROM cohort_versions WHERE cohort_id = %s AND bitmap_key IS NOT NULL"
            " ORDER BY definition_version DESC, base_time DESC, id DESC OFFSET %s)"
            " UPDATE cohort_versions v SET bitmap_key = NULL, bitmap = NULL, expired_at = now() FROM old WHERE v.id = old.id"
            " AND v.id IS DISTINCT FROM (SELECT latest_version_id FROM cohorts WHERE id = %s)"
            " RETURNING old.bitmap_key", (cohort_id, max(keep, 0), cohort_id))
        return [r[0] for r in cur.fetchall()]


def store_bitmap(conn, version_id: int, payload: bytes) -> None:
    """Keep the durable copy of a version's serialized bitmap (in the caller's publishing transaction)."""
    with conn.cursor() as cur:
        cur.execute("UPDATE cohort_versions SET bitmap = %s WHERE id = %s", (psycopg2.Binary(payload), version_id))


def published_bitmap(conn, cohort_id: int) -> bytes | None:
    """The durable copy of the cohort's published (latest) version, or None if it has none."""
    with conn.cursor() as cur:
        cur.execute("SELECT v.bitmap FROM cohorts c JOIN cohort_versions v ON v.id = c.latest_version_id"
                    " WHERE c.id = %s AND v.bitmap IS NOT NULL", (cohort_id,))
        row = cur.fetchone()
    return None if row is None else bytes(row[0])


def recent_counts(conn, cohort_ids, per_cohort: int = 20) -> dict[int, list[dict]]:
    """cohort id -> its newest succeeded versions (oldest first): id, base_time, count, finished_at."""
    if not cohort_ids:
        return {}
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "SELECT cohort_id, id, base_time, count, finished_at FROM (SELECT cohort_id, id, base_time, count,"
            " finished_at, row_number() OVER (PARTITION BY cohort_id ORDER BY finished_at DESC, id DESC) AS n"
            " FROM cohort_versions WHERE cohort_id = ANY(%s) AND status = 'succeed') v WHERE n <= %s"
            " ORDER BY cohort_id, finished_at, id", (list(cohort_ids), per_cohort))
        found: dict[int, list[dict]] = {}
        for row in cur.fetchall():
            found.setdefault(row.pop("cohort_id"), []).append(row)
        return found


def get_many(conn, version_ids) -> dict[int, dict]:
    """id -> version row, for the ids that exist (None ids ignored)."""
    wanted = [v for v in version_ids if v is not None]
    if not wanted:
        return {}
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT " + COLUMNS + " FROM cohort_versions WHERE id = ANY(%s)", (wanted,))
        return {row["id"]: row for row in cur.fetchall()}
