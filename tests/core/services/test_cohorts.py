"""The cohort service without Flask: its domain errors, and commit before send."""

from __future__ import annotations

import psycopg2
import pytest
from psycopg2.extras import RealDictCursor

from cohort_engine.definition import DefinitionError
from core.errors import Conflict, DuplicateName, Forbidden, NotFound
from core.services.cohorts import CohortService

LEAF = {"type": "ids", "keys": ["a"]}


@pytest.fixture
def service(database_url, project, service_settings, redis_client):
    conn = psycopg2.connect(database_url)
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT * FROM projects WHERE id = %s", (project[1],))
        row = cur.fetchone()
    sent = []

    def send(created):
        # Sent only after the commit: another connection sees the job already.
        with psycopg2.connect(database_url) as other, other.cursor() as cur:
            cur.execute("SELECT count(*) FROM jobs WHERE id = ANY(%s)", ([job["id"] for job in created],))
            assert cur.fetchone()[0] == len(created)
        sent.extend(created)

    yield CohortService(conn, row, service_settings, send=send, redis=lambda: redis_client), sent
    conn.close()


def test_create_submit_and_send_after_commit(service):
    cohorts, sent = service
    cohort = cohorts.create("first", LEAF)
    submitted = cohorts.submit(cohort, "create")
    again = cohorts.submit(cohort, "refresh")  # joins the live job of the partition
    cohorts.commit_and_enqueue([submitted, again])
    assert again == (submitted[0], False) and sent == [submitted[0]]


def test_domain_errors(service):
    cohorts, _ = service
    first = cohorts.create("one", LEAF)
    cohorts.conn.commit()
    with pytest.raises(DuplicateName) as taken:
        cohorts.create("one", LEAF)
    assert taken.value.errors == {"name": ["already exists"]}
    cohorts.conn.rollback()
    user = cohorts.create("two", {"type": "cohort", "cohort_id": first["id"]})
    cohorts.conn.commit()
    with pytest.raises(DefinitionError):
        cohorts.update(first, {"type": "cohort", "cohort_id": user["id"]}, None, {})
    with pytest.raises(Conflict, match=r"refer to this cohort"):
        cohorts.delete(cohorts.get(first["id"], lock=True))
    cohorts.conn.rollback()
    with pytest.raises(NotFound) as missing:
        cohorts.get(first["id"], dialect="sensors", noun="segmenter rule", field="id")
    assert missing.value.body() == {"error": f"segmenter rule {first['id']} not found",
                                    "errors": {"id": ["no such segmenter rule"]}}
    with pytest.raises(Forbidden):
        cohorts.check_project("someone-else")
    cohorts.delete(cohorts.get(user["id"], lock=True))
    with pytest.raises(NotFound):
        cohorts.get(user["id"])


def test_a_daily_cohort_follows_the_project_time_until_its_cron_is_set_by_hand(service):
    cohorts, _ = service
    daily = cohorts.create("daily", LEAF, daily_refresh=True)
    assert (daily["cron"], daily["daily_refresh"], daily["dynamic"], daily["scheduler_running"]) == (
        "0 4 * * *", True, True, True)
    same = cohorts.update(daily, LEAF, None, {"cron": "0 4 * * *", "name": "daily"})
    assert same["daily_refresh"] is True
    moved = cohorts.update(same, LEAF, None, {"cron": "30 6 * * *"})
    assert (moved["cron"], moved["daily_refresh"]) == ("30 6 * * *", False)
