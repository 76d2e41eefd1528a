"""A dynamic tag recomputes on its cron through the cohorts' scheduler (real beat, maintenance and compute workers)."""

from __future__ import annotations

from cohort_engine import db
from tests.app.test_tags_api import SEGMENT, SEGMENT_EXPECTED, create, csv_map, loaded  # noqa: F401
from tests.services import wait_until


def test_dynamic_tag_computes_on_its_cron(client, worker, beat, loaded, database_url):  # noqa: F811
    _, _, headers = loaded
    tag = create(client, headers, "segment_every_second", SEGMENT, dynamic=True, cron="* * * * * *")["tag"]

    def cron_versions():
        with db.connection(database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM jobs j JOIN cohort_versions v ON v.id = j.version_id"
                        " WHERE j.cohort_id = %s AND j.kind = 'cron' AND j.status = 'succeed'", (tag["id"],))
            return cur.fetchone()[0] >= 2

    try:
        wait_until(cron_versions, timeout=30, interval=0.2, what="two cron versions of the tag")
    finally:
        client.patch(f"/api/v1/tags/{tag['id']}", headers=headers, json={"dynamic": False, "cron": None})
    assert csv_map(client, headers, tag["id"]) == SEGMENT_EXPECTED
