"""The dashboard's overview over the real database: recent version counts, failures first, status and error."""

from __future__ import annotations

from core.data import cohorts, jobs, versions
from core.services.overview import project_overview


def test_overview_of_a_project(pg, project):
    name, project_id = project
    cohort = cohorts.insert(pg, project_id, "c", {"type": "ids", "keys": []})
    other = cohorts.insert(pg, project_id, "d", {"type": "ids", "keys": []})
    counts = list(range(10, 35))  # 25 versions; the chart keeps the newest 20, oldest first
    for count in counts:
        version = versions.insert_succeeded(pg, cohort["id"], 1, "2024-01-01", count, f"k{count}")
    versions.insert_failed(pg, cohort["id"], 1, "2024-01-02", "x", "failed versions are not counts")
    cohorts.set_latest_version(pg, cohort["id"], version["id"])
    created = []
    for status in ("failed", "succeed", "computing", "failed", "new"):
        job, _ = jobs.insert(pg, project_id, "refresh", cohort_id=other["id"], partition_key=f"p{len(created)}")
        created.append((job["id"], status))
        if status == "failed":
            jobs.fail(pg, job["id"], "boom", f"job {job['id']} failed")
        elif status != "new":
            with pg.cursor() as cur:
                cur.execute("UPDATE jobs SET status = %s, progress = %s WHERE id = %s",
                            (status, 100 if status == "succeed" else 40, job["id"]))
    overview = project_overview(pg, {"id": project_id, "name": name})
    by_name = {c["name"]: c for c in overview["cohorts"]}
    assert [v["count"] for v in by_name["c"]["history"]] == counts[-20:]
    assert by_name["c"]["count"] == counts[-1] and by_name["c"]["status"] == "succeed"
    # The newest job of d is `new`: that is its status, and it shows no error though older jobs failed.
    assert by_name["d"]["status"] == "new" and by_name["d"]["live"] and by_name["d"]["error"] is None
    order = {"failed": 0, "computing": 1, "new": 2, "succeed": 3}
    expected = [job_id for job_id, _ in sorted(created, key=lambda c: (order[c[1]], -c[0]))]
    assert [j["id"] for j in overview["jobs"]] == expected
    pg.rollback()
