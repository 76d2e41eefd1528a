"""A project at a glance, for the dashboard: cohorts with status, running progress, counts over versions; jobs."""

from __future__ import annotations

from core.data import cohorts, jobs, versions

LIVE = ("new", "computing")


def project_overview(conn, project: dict, *, max_items: int = 500, versions_per_item: int = 20,
                     job_limit: int = 100) -> dict:
    """Plain data: cohorts, tags (each up to max_items, with totals) and jobs (docs/dashboard.md says what each shows)."""
    latest_jobs = jobs.latest_per_cohort(conn, project["id"])
    found = {"jobs": jobs.recent_failures_first(conn, project["id"], job_limit)}
    for entity, key in (("cohort", "cohorts"), ("tag", "tags")):
        total, rows = cohorts.list_page(conn, project["id"], limit=max_items, entity=entity)
        found[key] = summaries(conn, rows, latest_jobs, versions_per_item)
        found["total_" + key] = total
    return found


def summaries(conn, rows: list[dict], latest_jobs: dict, versions_per_item: int) -> list[dict]:
    """One line per cohort (or tag) row: its status, live job, latest count, last error and count history."""
    history = versions.recent_counts(conn, [c["id"] for c in rows], versions_per_item)
    published = versions.get_many(conn, [c["latest_version_id"] for c in rows])
    items = []
    for cohort in rows:
        job = latest_jobs.get(cohort["id"])
        version = published.get(cohort["latest_version_id"])
        items.append({
            "id": cohort["id"], "name": cohort["name"], "display_name": cohort["display_name"],
            "dialect": cohort["dialect"], "dynamic": cohort["dynamic"], "cron": cohort["cron"],
            "value_type": cohort.get("value_type"),
            "status": status_of(job, version),
            "job": job, "live": job is not None and job["status"] in LIVE,
            "count": version["count"] if version else None,
            "computed_at": version["finished_at"] if version else None,
            "error": last_error(cohort, job),
            "history": history.get(cohort["id"], []),
        })
    return items


def status_of(job: dict | None, version: dict | None) -> str:
    """What the cohort is doing now: its live job's status, else how its last job ended, else its version's."""
    if job is not None:
        return job["status"]
    return version["status"] if version else "new"


def last_error(cohort: dict, job: dict | None) -> dict | None:
    """The error a person should see: the last job's failure, else the scheduler's last skip."""
    if job is not None and job["status"] == "failed":
        return {"code": job["error_code"], "message": job["error_message"], "at": job["finished_at"]}
    if cohort["schedule_error"]:
        return {"code": "schedule_error", "message": cohort["schedule_error"], "at": cohort["schedule_error_at"]}
    return None
