"""cohorts table."""

from __future__ import annotations

from psycopg2.extras import Json, RealDictCursor

COLUMNS = ("id, project_id, name, display_name, dialect, request_body, definition, definition_version, dynamic,"
           " cron, scheduler_running, last_fire_at, error_count, retry_after, owner, latest_version_id,"
           " created_at, updated_at, schedule_error, schedule_error_at, daily_refresh, entity, value_type")


# The settings an update may change besides the definition.
SETTING_COLUMNS = ("name", "display_name", "dynamic", "cron", "scheduler_running", "owner", "daily_refresh",
                   "value_type")


def insert(conn, project_id: int, name: str, definition: dict, *, display_name=None, dialect="native",
           request_body=None, dynamic=False, cron=None, scheduler_running=False, owner=None,
           daily_refresh=False, entity="cohort", value_type=None) -> dict:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "INSERT INTO cohorts (project_id, name, display_name, dialect, request_body, definition, dynamic, cron,"
            " scheduler_running, owner, daily_refresh, entity, value_type)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            f" RETURNING {COLUMNS}",
            (project_id, name, display_name, dialect, Json(request_body), Json(definition), dynamic, cron,
             scheduler_running, owner, daily_refresh, entity, value_type))
        return cur.fetchone()


def get(conn, project_id: int, cohort_id: int, lock: bool = False) -> dict | None:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM cohorts WHERE id = %s AND project_id = %s"
                    + (" FOR UPDATE" if lock else ""), (cohort_id, project_id))
        return cur.fetchone()


def get_any(conn, cohort_id: int, lock: bool = False) -> dict | None:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM cohorts WHERE id = %s" + (" FOR UPDATE" if lock else ""), (cohort_id,))
        return cur.fetchone()


def definition_of(conn, project_id: int, cohort_id: int) -> dict | None:
    """The canonical tree of a cohort (or definition of a tag) of this project, or None."""
    with conn.cursor() as cur:
        cur.execute("SELECT definition FROM cohorts WHERE id = %s AND project_id = %s", (cohort_id, project_id))
        row = cur.fetchone()
    return None if row is None else row[0]


def entities_of(conn, project_id: int, ids) -> dict[int, tuple[str, str | None]]:
    """{id: (entity, value_type)} of those of the ids that are this project's cohorts or tags."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, entity, value_type FROM cohorts WHERE project_id = %s AND id = ANY(%s)",
                    (project_id, list(ids)))
        return {r[0]: (r[1], r[2]) for r in cur.fetchall()}


def list_page(conn, project_id: int, *, status=None, limit=50, offset=0, entity="cohort") -> tuple[int, list[dict]]:
    """A page of cohorts (or tags) with their latest version's status, newest first, and the total."""
    where, params = ["c.project_id = %s", "c.entity = %s"], [project_id, entity]
    if status:
        where.append("v.status = %s")
        params.append(status)
    condition = " AND ".join(where)
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "SELECT count(*) AS n FROM cohorts c LEFT JOIN LATERAL (SELECT status FROM cohort_versions"
            " WHERE cohort_id = c.id ORDER BY id DESC LIMIT 1) v ON true WHERE " + condition, params)
        total = cur.fetchone()["n"]
        cur.execute(
            f"SELECT {', '.join('c.' + c.strip() for c in COLUMNS.split(','))} FROM cohorts c"
            " LEFT JOIN LATERAL (SELECT status FROM cohort_versions WHERE cohort_id = c.id ORDER BY id DESC LIMIT 1) v"
            f" ON true WHERE {condition} ORDER BY c.id DESC LIMIT %s OFFSET %s", params + [limit, offset])
        return total, cur.fetchall()


def update_definition(conn, cohort_id: int, definition: dict, request_body=None, **fields) -> dict:
    sets = ["definition = %s", "definition_version = definition_version + 1", "updated_at = now()",
            "request_body = coalesce(%s, request_body)"]
    params = [Json(definition), Json(request_body) if request_body is not None else None]
    for column in SETTING_COLUMNS:
        if column in fields:
            sets.append(f"{column} = %s")
            params.append(fields[column])
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"UPDATE cohorts SET {', '.join(sets)} WHERE id = %s RETURNING {COLUMNS}", params + [cohort_id])
        return cur.fetchone()


def update_settings(conn, cohort_id: int, request_body=None, **fields) -> dict:
    """Change name, display name, owner or schedule without touching the definition (no new definition_version)."""
    sets, params = ["updated_at = now()", "request_body = coalesce(%s, request_body)"], [
        Json(request_body) if request_body is not None else None]
    for column in SETTING_COLUMNS:
        if column in fields:
            sets.append(f"{column} = %s")
            params.append(fields[column])
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"UPDATE cohorts SET {', '.join(sets)} WHERE id = %s RETURNING {COLUMNS}", params + [cohort_id])
        return cur.fetchone()


def id_by_name(conn, project_id: int, name: str) -> int | None:
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM cohorts WHERE project_id = %s AND name = %s", (project_id, name))
        row = cur.fetchone()
    return None if row is None else row[0]


def list_by_dialect(conn, project_id: int, dialect: str, entity: str = "cohort") -> list[dict]:
    """The project's cohorts (or tags) created through one dialect, oldest first."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM cohorts WHERE project_id = %s AND dialect = %s AND entity = %s"
                    " ORDER BY id", (project_id, dialect, entity))
        return cur.fetchall()


def lock_for_publish(conn, cohort_id: int) -> tuple[dict, dict] | None:
    """Lock a cohort row to publish a version of it; (cohort, facts) in one statement, or None if it is gone.

    facts: latest (id, definition_version, base_time of the published version, or None), kept (how
    many versions still hold a bitmap) and hooked (whether any active webhook of the project could
    take an event of it): what the publisher decides on without a round trip each.
    """
    names = [c.strip() for c in COLUMNS.split(",")]
    with conn.cursor() as cur:
        cur.execute(
            "SELECT " + ", ".join("c." + n for n in names) + ", v.id, v.definition_version, v.base_time,"
            " (SELECT count(*) FROM cohort_versions k WHERE k.cohort_id = c.id AND k.bitmap_key IS NOT NULL),"
            " EXISTS (SELECT 1 FROM webhooks w WHERE w.project_id = c.project_id AND w.active"
            " AND (w.cohort_id IS NULL OR w.cohort_id = c.id))"
            " FROM cohorts c LEFT JOIN cohort_versions v ON v.id = c.latest_version_id WHERE c.id = %s"
            " FOR UPDATE OF c", (cohort_id,))
        row = cur.fetchone()
    if row is None:
        return None
    cohort = dict(zip(names, row[:len(names)], strict=True))
    latest_id, latest_definition, latest_base, kept, hooked = row[len(names):]
    latest = None if latest_id is None else {"id": latest_id, "definition_version": latest_definition,
                                             "base_time": latest_base}
    return cohort, {"latest": latest, "kept": kept, "hooked": hooked}


def set_latest_version(conn, cohort_id: int, version_id: int) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE cohorts SET latest_version_id = %s, updated_at = now() WHERE id = %s", (version_id, cohort_id))


def delete(conn, project_id: int, cohort_id: int) -> bool:
    with conn.cursor() as cur:
        cur.execute("DELETE FROM cohorts WHERE id = %s AND project_id = %s", (cohort_id, project_id))
        return cur.rowcount == 1


def referencing(conn, project_id: int, cohort_id: int) -> list[int]:
    """Ids of this project's cohorts and tags whose definition refers to cohort_id (a cohort or a tag leaf)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id FROM cohorts WHERE project_id = %s AND id <> %s"
            " AND (jsonb_path_exists(definition, 'strict $.**.cohort_id ? (@ == $id)', jsonb_build_object('id', %s))"
            " OR jsonb_path_exists(definition, 'strict $.**.tag_id ? (@ == $id)', jsonb_build_object('id', %s)))",
            (project_id, cohort_id, cohort_id, cohort_id))
        return [r[0] for r in cur.fetchall()]


def due_for_schedule(conn) -> list[dict]:
    """Dynamic cohorts whose scheduler runs, locked for this scheduler pass (others skip them)."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM cohorts WHERE dynamic AND scheduler_running AND cron IS NOT NULL"
                    " ORDER BY id FOR UPDATE SKIP LOCKED")
        return cur.fetchall()


def set_daily_cron(conn, project_id: int, cron: str) -> int:
    """Give the project's daily-refresh cohorts this cron (its new daily refresh time); how many changed."""
    with conn.cursor() as cur:
        cur.execute("UPDATE cohorts SET cron = %s WHERE project_id = %s AND daily_refresh AND cron IS DISTINCT FROM %s",
                    (cron, project_id, cron))
        return cur.rowcount


def record_fire(conn, cohort_id: int, fire_time) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE cohorts SET last_fire_at = %s WHERE id = %s", (fire_time, cohort_id))


def mark_schedule_error(conn, cohort_id: int, message: str) -> None:
    """Record why the scheduler skipped this cohort (kept until a pass schedules it again)."""
    with conn.cursor() as cur:
        cur.execute("UPDATE cohorts SET schedule_error = %s, schedule_error_at = now() WHERE id = %s",
                    (message, cohort_id))


def clear_schedule_error(conn, cohort_id: int) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE cohorts SET schedule_error = NULL, schedule_error_at = NULL WHERE id = %s", (cohort_id,))


def record_outcome(conn, cohort_id: int, failed: bool, backoff_base: float, backoff_max: float) -> None:
    """Count consecutive failures and set when the scheduler may try again (exponential backoff)."""
    with conn.cursor() as cur:
        if failed:
            cur.execute(
                "UPDATE cohorts SET error_count = error_count + 1, retry_after = now() + make_interval("
                "secs => least(%s, %s * power(2, error_count))) WHERE id = %s",
                (backoff_max, backoff_base, cohort_id))
        else:
            cur.execute("UPDATE cohorts SET error_count = 0, retry_after = NULL WHERE id = %s", (cohort_id,))


def with_status(conn, project_id: int, dialect: str, *, cohort_id=None, name=None, name_contains=None,
                body_values: dict | None = None, limit=None, offset=0) -> tuple[int, list[dict]]:
    """A dialect's cohorts (oldest first) with their newest job (job_status, job_progress), latest published
    version (users_num, refreshed_at, base_time) and number of computed versions, and the total.

    name_contains: a case-insensitive substring of the name; body_values: {request_body field: [values]}.
    """
    where, params = ["c.project_id = %s", "c.dialect = %s"], [project_id, dialect]
    if cohort_id is not None:
        where.append("c.id = %s")
        params.append(cohort_id)
    if name is not None:
        where.append("c.name = %s")
        params.append(name)
    if name_contains:
        where.append("strpos(lower(c.name), lower(%s)) > 0")
        params.append(name_contains)
    for key, values in (body_values or {}).items():
        where.append("c.request_body ->> %s = ANY(%s)")
        params.extend([key, list(values)])
    condition = " AND ".join(where)
    page = "" if limit is None else " LIMIT %s OFFSET %s"
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT count(*) AS n FROM cohorts c WHERE {condition}", params)
        total = cur.fetchone()["n"]
        cur.execute(
            f"SELECT {', '.join('c.' + c.strip() for c in COLUMNS.split(','))}, j.status AS job_status,"
            " j.progress AS job_progress, v.count AS users_num, v.finished_at AS refreshed_at, v.base_time,"
            " (SELECT count(*) FROM cohort_versions cv WHERE cv.cohort_id = c.id AND cv.status = 'succeed') AS versions"
            " FROM cohorts c LEFT JOIN cohort_versions v ON v.id = c.latest_version_id"
            " LEFT JOIN LATERAL (SELECT status, progress FROM jobs WHERE cohort_id = c.id ORDER BY id DESC LIMIT 1) j"
            f" ON true WHERE {condition} ORDER BY c.id{page}",
            params + ([] if limit is None else [limit, offset]))
        return total, cur.fetchall()
