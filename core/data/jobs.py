"""jobs table: status new -> computing -> succeed | failed, progress 0..100."""

from __future__ import annotations

from psycopg2.extras import Json, RealDictCursor

COLUMNS = ("id, project_id, kind, cohort_id, version_id, partition_key, params, base_time, status, progress,"
           " error_code, error_message, result, attempts, max_attempts, cancel_requested, worker, created_at,"
           " enqueued_at, started_at, heartbeat_at, finished_at")


def insert(conn, project_id: int, kind: str, *, cohort_id=None, params=None, base_time=None,
           partition_key="latest", max_attempts=3) -> tuple[dict, bool]:
    """Insert a job; if the cohort partition already has a live job, return that one instead.

    Returns (job, created). The new row is marked enqueued: the caller sends it right after the
    commit, and clears the mark with unmark_enqueued if sending fails.
    """
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        # The live job can end between a refused insert and the read; then the insert is tried again.
        for _ in range(3):
            # A live job of the partition (or a cron fire already recorded) makes this a no-op.
            cur.execute(
                "INSERT INTO jobs (project_id, kind, cohort_id, params, base_time, partition_key, max_attempts,"
                " enqueued_at) VALUES (%s, %s, %s, %s, coalesce(%s, now()), %s, %s, now())"
                " ON CONFLICT DO NOTHING RETURNING " + COLUMNS,
                (project_id, kind, cohort_id, Json(params or {}), base_time, partition_key, max_attempts))
            job = cur.fetchone()
            if job is not None:
                return job, True
            cur.execute("SELECT " + COLUMNS + " FROM jobs WHERE cohort_id = %s AND partition_key = %s"
                        " AND status IN ('new', 'computing')", (cohort_id, partition_key))
            live = cur.fetchone()
            if live is not None or kind == "cron":
                # A cron fire that already has its job (the unique fire-time index) has no live job to join.
                return live, False
        raise RuntimeError(f"cohort {cohort_id} partition {partition_key}: could not insert or join a job")


def get(conn, job_id: int, project_id: int | None = None) -> dict | None:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        if project_id is None:
            cur.execute("SELECT " + COLUMNS + " FROM jobs WHERE id = %s", (job_id,))
        else:
            cur.execute("SELECT " + COLUMNS + " FROM jobs WHERE id = %s AND project_id = %s", (job_id, project_id))
        return cur.fetchone()


def list_page(conn, project_id: int, *, status=None, cohort_id=None, limit=50, offset=0) -> list[dict]:
    where, params = ["project_id = %s"], [project_id]
    if status:
        where.append("status = %s")
        params.append(status)
    if cohort_id is not None:
        where.append("cohort_id = %s")
        params.append(cohort_id)
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT " + COLUMNS + f" FROM jobs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT %s OFFSET %s",
                    params + [limit, offset])
        return cur.fetchall()


def live_for(conn, cohort_id: int, partition_key: str = "latest") -> dict | None:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT " + COLUMNS + " FROM jobs WHERE cohort_id = %s AND partition_key = %s"
                    " AND status IN ('new', 'computing')", (cohort_id, partition_key))
        return cur.fetchone()


def _prefixed(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in COLUMNS.split(","))


def latest_per_base_time(conn, cohort_id: int, base_times) -> dict:
    """{base_time: newest job of that cohort partition, with its version's count as version_count}."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            f"SELECT DISTINCT ON (j.base_time) {_prefixed('j')}, v.count AS version_count FROM jobs j"
            " LEFT JOIN cohort_versions v ON v.id = j.version_id"
            " WHERE j.cohort_id = %s AND j.base_time = ANY(%s::timestamptz[]) ORDER BY j.base_time, j.id DESC",
            (cohort_id, list(base_times)))
        return {row["base_time"]: row for row in cur.fetchall()}


def partition_summaries(conn, cohort_ids) -> dict[int, dict]:
    """Per cohort: failed (partitions whose newest job failed) and last (newest job of the latest base time)."""
    ids = list(cohort_ids)
    summaries = {cohort_id: {"failed": 0, "last": None} for cohort_id in ids}
    if not ids:
        return summaries
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "SELECT cohort_id, count(*) FILTER (WHERE status = 'failed') AS failed FROM ("
            " SELECT DISTINCT ON (cohort_id, base_time) cohort_id, status FROM jobs WHERE cohort_id = ANY(%s)"
            " ORDER BY cohort_id, base_time, id DESC) newest GROUP BY cohort_id", (ids,))
        for row in cur.fetchall():
            summaries[row["cohort_id"]]["failed"] = row["failed"]
        cur.execute(
            f"SELECT DISTINCT ON (j.cohort_id) {_prefixed('j')}, v.count AS version_count FROM jobs j"
            " LEFT JOIN cohort_versions v ON v.id = j.version_id WHERE j.cohort_id = ANY(%s)"
            " ORDER BY j.cohort_id, j.base_time DESC, j.id DESC", (ids,))
        for row in cur.fetchall():
            summaries[row["cohort_id"]]["last"] = row
    return summaries


def delete_finished_previews(conn, older_than_seconds: float) -> int:
    """Delete preview jobs (they have no cohort) finished more than older_than_seconds ago; how many."""
    with conn.cursor() as cur:
        cur.execute("DELETE FROM jobs WHERE kind = 'preview' AND cohort_id IS NULL AND status IN ('succeed', 'failed')"
                    " AND finished_at < now() - make_interval(secs => %s)", (older_than_seconds,))
        return cur.rowcount


def mark_enqueued(conn, job_ids: list[int]) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE jobs SET enqueued_at = now() WHERE id = ANY(%s)", (list(job_ids),))


def unmark_enqueued(conn, job_ids: list[int]) -> None:
    """Jobs that could not be sent: the sweeper sends them at its next pass."""
    with conn.cursor() as cur:
        cur.execute("UPDATE jobs SET enqueued_at = NULL WHERE id = ANY(%s) AND status = 'new'", (list(job_ids),))


def claim(conn, job_id: int, token: str, stale_seconds: float, resume: str | None = None) -> tuple[dict | None, str]:
    """Take a job for computing; returns (job, why): claimed, done, busy, cancelled, exhausted or missing.

    resume: the token of this task's previous try, which could not release its claim (PostgreSQL was
    down); if the job still holds it, the claim passes to token without counting another attempt.
    """
    claim_sql = ("UPDATE jobs SET status = 'computing', attempts = attempts + 1, worker = %s, progress = 0,"
                 " started_at = coalesce(started_at, now()), heartbeat_at = now() WHERE id = %s")
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        if resume:
            cur.execute("UPDATE jobs SET worker = %s, progress = 0, heartbeat_at = now() WHERE id = %s"
                        " AND worker = %s AND status = 'computing' AND NOT cancel_requested RETURNING " + COLUMNS,
                        (token, job_id, resume))
            job = cur.fetchone()
            if job is not None:
                return job, "claimed"
        # The common case, a new job with attempts left, in one statement.
        cur.execute(claim_sql + " AND status = 'new' AND attempts < max_attempts AND NOT cancel_requested"
                    " RETURNING " + COLUMNS,
                    (token, job_id))
        job = cur.fetchone()
        if job is not None:
            return job, "claimed"
        cur.execute("SELECT " + COLUMNS + " FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
        job = cur.fetchone()
        if job is None:
            return None, "missing"
        if job["status"] in ("succeed", "failed"):
            return job, "done"
        if job["status"] == "computing":
            cur.execute("SELECT heartbeat_at < now() - make_interval(secs => %s) FROM jobs WHERE id = %s",
                        (stale_seconds, job_id))
            if not cur.fetchone()["?column?"]:
                return job, "busy"
        if job["cancel_requested"]:
            return job, "cancelled"
        if job["attempts"] >= job["max_attempts"]:
            return job, "exhausted"
        cur.execute(claim_sql + " RETURNING " + COLUMNS, (token, job_id))
        return cur.fetchone(), "claimed"


def _names(columns: str) -> list[str]:
    return [c.strip() for c in columns.split(",")]


def claim_new(conn, job_id: int, token: str, project_columns: str, cohort_columns: str
              ) -> tuple[dict, dict, dict | None] | None:
    """The common claim in one round trip: a new job with attempts left, with its project (and backend) and cohort.

    Returns (job, project, cohort or None) or None when the job is not a plain new one (then claim()
    decides). conn must be idle: the statement is its own transaction (autocommit), one round trip
    where BEGIN, the claim and COMMIT were three. It commits without waiting for the WAL flush: a
    claim lost with the server leaves the job `new` and marked enqueued, which the sweeper resends
    when the broker lost it too, and a publish after it fails its claim check. Final status writes
    stay durable.
    """
    job_names, project_names, cohort_names = _names(COLUMNS), _names(project_columns) + ["backend"], _names(cohort_columns)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            # set_config(..., true) lasts to the end of this statement's transaction: its commit is asynchronous.
            cur.execute(
                "WITH j AS (UPDATE jobs SET status = 'computing', attempts = attempts + 1, worker = %s, progress = 0,"
                " started_at = coalesce(started_at, now()), heartbeat_at = now() WHERE id = %s AND status = 'new'"
                " AND attempts < max_attempts AND NOT cancel_requested RETURNING " + COLUMNS + ")"
                " SELECT j.*, " + ", ".join("p." + n for n in project_names) + ", "
                + ", ".join("c." + n for n in cohort_names) + ", set_config('synchronous_commit', 'off', true)"
                " FROM j JOIN projects p ON p.id = j.project_id LEFT JOIN cohorts c ON c.id = j.cohort_id",
                (token, job_id))
            row = cur.fetchone()
    finally:
        conn.autocommit = False
    if row is None:
        return None
    row = row[:-1]
    job = dict(zip(job_names, row[:len(job_names)], strict=True))
    rest = row[len(job_names):]
    project = dict(zip(project_names, rest[:len(project_names)], strict=True))
    cohort = dict(zip(cohort_names, rest[len(project_names):], strict=True)) if job["cohort_id"] is not None else None
    if cohort is not None and cohort["id"] is None:
        cohort = None  # deleted meanwhile (the job row cascades with it, so this is a race only)
    return job, project, cohort


def touch(conn, job_id: int, token: str, progress: int | None = None) -> dict | None:
    """Heartbeat (and raise progress); returns {cancel_requested, status} or None if the claim was lost."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        # A lost heartbeat or progress tick costs nothing, so it need not wait for the WAL flush.
        cur.execute("SET LOCAL synchronous_commit TO OFF")
        cur.execute(
            "UPDATE jobs SET heartbeat_at = now(), progress = greatest(progress, coalesce(%s, progress))"
            " WHERE id = %s AND worker = %s AND status = 'computing' RETURNING cancel_requested, status",
            (progress, job_id, token))
        return cur.fetchone()


def lock_claimed(conn, job_id: int, token: str) -> dict | None:
    """Lock a job this claim still holds; returns {cancel_requested, status} or None if the claim was lost."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT cancel_requested, status FROM jobs WHERE id = %s AND worker = %s AND status = 'computing'"
                    " FOR UPDATE", (job_id, token))
        return cur.fetchone()


def succeed(conn, job_id: int, token: str, result: dict, version_id: int | None) -> bool:
    """Mark a job this claim still holds, and nobody asked to cancel, succeed; False if it could not."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE jobs SET status = 'succeed', progress = 100, result = %s, version_id = %s, finished_at = now(),"
            " error_code = NULL, error_message = NULL"
            " WHERE id = %s AND worker = %s AND status = 'computing' AND NOT cancel_requested",
            (Json(result), version_id, job_id, token))
        return cur.rowcount == 1


def fail(conn, job_id: int, code: str, message: str, token: str | None = None) -> bool:
    """End a live job failed (only the claim holder may, when a token is given)."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE jobs SET status = 'failed', error_code = %s, error_message = %s, finished_at = now(),"
            " progress = least(progress, 99) WHERE id = %s AND status IN ('new', 'computing')"
            + (" AND worker = %s" if token else ""),
            (code, message, job_id, token) if token else (code, message, job_id))
        return cur.rowcount == 1


def release(conn, job_id: int, token: str) -> None:
    """Give a claimed job back (status new) so a retry can claim it again; the attempt does not count."""
    with conn.cursor() as cur:
        cur.execute("UPDATE jobs SET status = 'new', worker = NULL, progress = 0, attempts = attempts - 1"
                    " WHERE id = %s AND worker = %s AND status = 'computing'", (job_id, token))


def request_cancel(conn, job_id: int) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE jobs SET cancel_requested = true WHERE id = %s AND status IN ('new', 'computing')", (job_id,))


def stale_computing(conn, stale_seconds: float) -> list[dict]:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT " + COLUMNS + " FROM jobs WHERE status = 'computing'"
                    " AND heartbeat_at < now() - make_interval(secs => %s) FOR UPDATE SKIP LOCKED", (stale_seconds,))
        return cur.fetchall()


def requeue(conn, job_id: int) -> None:
    with conn.cursor() as cur:
        # Marked enqueued: the sweeper sends it right after this commits.
        cur.execute("UPDATE jobs SET status = 'new', worker = NULL, progress = 0, enqueued_at = now()"
                    " WHERE id = %s AND status = 'computing'", (job_id,))


def waiting_unqueued(conn, older_than_seconds: float, requeue_after_seconds: float) -> list[dict]:
    """Jobs ({id, kind}) left `new` that were never enqueued (or long ago): the sweeper enqueues them again."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "SELECT id, kind FROM jobs WHERE status = 'new' AND created_at < now() - make_interval(secs => %s)"
            " AND (enqueued_at IS NULL OR enqueued_at < now() - make_interval(secs => %s)) ORDER BY id LIMIT 1000",
            (older_than_seconds, requeue_after_seconds))
        return cur.fetchall()


def public(job: dict) -> dict:
    """The client-facing view of a job row."""
    def iso(value):
        return value.isoformat() if value is not None else None

    return {
        "id": job["id"], "kind": job["kind"], "cohort_id": job["cohort_id"], "status": job["status"],
        "progress": job["progress"], "error_code": job["error_code"], "error_message": job["error_message"],
        "result": job["result"], "base_time": iso(job["base_time"]), "attempts": job["attempts"],
        "created_at": iso(job["created_at"]), "started_at": iso(job["started_at"]),
        "finished_at": iso(job["finished_at"]),
    }


def status_counts(conn) -> list[tuple[str, str, int]]:
    """(kind, status, count) over all jobs, for /metrics."""
    with conn.cursor() as cur:
        cur.execute("SELECT kind, status, count(*) FROM jobs GROUP BY kind, status ORDER BY kind, status")
        return cur.fetchall()


def queue_ages(conn) -> tuple[float, float]:
    """Seconds the oldest `new` job has waited, and the largest heartbeat lag of `computing` jobs."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'new')), 0),"
            " coalesce(extract(epoch FROM now() - min(heartbeat_at) FILTER (WHERE status = 'computing')), 0)"
            " FROM jobs WHERE status IN ('new', 'computing')")
        waited, lag = cur.fetchone()
    return float(waited), float(lag)


def enqueued_waiting(conn, older_than_seconds: float, limit: int = 1000) -> list[dict]:
    """Jobs ({id, kind}) `new` and marked enqueued longer than older_than_seconds: their message should be
    in the broker; the sweeper checks that it still is (a broker restart loses them)."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT id, kind FROM jobs WHERE status = 'new'"
                    " AND enqueued_at < now() - make_interval(secs => %s) ORDER BY id LIMIT %s",
                    (older_than_seconds, limit))
        return cur.fetchall()


def latest_per_cohort(conn, project_id: int) -> dict[int, dict]:
    """cohort id -> its newest job (of any partition), for every cohort of the project that has one."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT DISTINCT ON (cohort_id) " + COLUMNS + " FROM jobs WHERE project_id = %s"
                    " AND cohort_id IS NOT NULL ORDER BY cohort_id, id DESC", (project_id,))
        return {row["cohort_id"]: row for row in cur.fetchall()}


def recent_failures_first(conn, project_id: int, limit: int = 100) -> list[dict]:
    """The project's newest jobs, failed ones first, then computing, new, succeeded (newest first in each)."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "SELECT * FROM (SELECT " + COLUMNS + " FROM jobs WHERE project_id = %s ORDER BY id DESC LIMIT %s) j"
            " ORDER BY CASE status WHEN 'failed' THEN 0 WHEN 'computing' THEN 1 WHEN 'new' THEN 2 ELSE 3 END,"
            " id DESC", (project_id, limit))
        return cur.fetchall()


def live_in_project(conn, project_id: int) -> list[dict]:
    """The project's jobs still new or computing: id, cohort_id, status, progress."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT id, cohort_id, status, progress FROM jobs WHERE project_id = %s"
                    " AND status IN ('new', 'computing') ORDER BY id", (project_id,))
        return cur.fetchall()
