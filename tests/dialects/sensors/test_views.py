"""The Sensors /segmenter API end to end: HTTP -> Postgres rows -> real worker (and beat) -> Redis bitmaps.

Expected member sets come from a brute force over the ingested rows in this file, never from the engine.
"""

from __future__ import annotations

import random
import time
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohort_engine import bitmaps
from cohort_engine.project import ProjectEngine
from tests.conftest import set_timezone
from tests.services import create_token_project, start_beat, stop, wait_until

ZONE = ZoneInfo("Asia/Shanghai")  # not UTC, so local base times and local days are exercised
FORMAT = "%Y-%m-%d %H:%M:%S"
FIRST_DAY = datetime(2024, 3, 1, tzinfo=ZONE)


def make_data(seed: int = 5):
    rnd = random.Random(seed)
    levels = {f"u{i:02d}": rnd.randint(0, 5) for i in range(30)}
    # (user, UTC time) pay events over 12 local days, at any hour so local and UTC days differ.
    pays = [(rnd.choice(sorted(levels) + ["x1", "x2"]), FIRST_DAY + timedelta(seconds=rnd.randint(0, 12 * 86400 - 1)))
            for _ in range(150)]
    return levels, pays


LEVELS, PAYS = make_data()


def brute_paid_between(first: date, last: date, at_least: int) -> set[str]:
    """Users with at least `at_least` pay events on local days first..last (inclusive)."""
    counts: dict[str, int] = {}
    for user, moment in PAYS:
        if first <= moment.astimezone(ZONE).date() <= last:
            counts[user] = counts.get(user, 0) + 1
    return {user for user, n in counts.items() if n >= at_least}


def brute_level_above(level: int) -> set[str]:
    return {user for user, value in LEVELS.items() if value > level}


@pytest.fixture(scope="module")
def store(database_url, service_settings, tmp_path_factory):
    """A project in Asia/Shanghai with LEVELS profiles and PAYS events; returns (id, token, engine)."""
    name, project_id, token = create_token_project(database_url, "sn")
    set_timezone(database_url, name, "Asia/Shanghai")
    folder = tmp_path_factory.mktemp("sensors-data")
    pq.write_table(pa.table({"distinct_id": list(LEVELS), "level": pa.array(list(LEVELS.values()), pa.int64())}),
                   folder / "u.parquet")
    pq.write_table(pa.table({"distinct_id": [u for u, _ in PAYS], "event": ["pay"] * len(PAYS),
                             "time": pa.array([t for _, t in PAYS], pa.timestamp("us", tz="UTC"))}),
                   folder / "e.parquet")
    engine = ProjectEngine(service_settings.engine, name)
    engine.ingest_users(folder / "u.parquet")
    engine.ingest_events(folder / "e.parquet")
    return project_id, token, engine


@pytest.fixture(scope="module")
def beat(service_env, maintenance_worker, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sensors-beat")
    process = start_beat(service_env, folder / "schedule", folder / "beat.log", loglevel="DEBUG")
    try:
        # A rule's first fire time is announced at creation: the scheduler must already be sending
        # (beat logs its periodic sends at DEBUG only).
        wait_until(lambda: "schedule-dynamic-cohorts" in (folder / "beat.log").read_text(errors="replace"),
                   timeout=30, interval=0.1, what="beat to send the scheduler task")
        yield process
    finally:
        stop(process)


def call(client, method, path, token, body=None):
    """A request authenticated the Sensors way (?token=)."""
    return client.open(path, method=method, json=body, query_string={"token": token})


def rule_body(name, content, rule_type=0, **extra):
    return {"id": 0, "name": name, "cname": name.replace("_", " "), "type": rule_type, "content": content, **extra}


def relation(*rules, how="and"):
    return {"type": "rules_relation", "relation": how, "rules": list(rules)}


def level_above(level):
    return {"type": "profile_rule", "field": "user.level", "function": "greater", "params": [level]}


def paid(time_function, time_params, at_least):
    return {"type": "event_rule", "measure": {"type": "event_measure", "event_name": "pay", "aggregator": "count"},
            "time_function": time_function, "time_params": time_params, "function": "greater",
            "params": [at_least - 1], "filters": []}


def create(client, token, body) -> dict:
    response = call(client, "POST", "/segmenter/rule", token, body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def statuses(client, token, cohort_id, base_times) -> dict[str, dict]:
    response = call(client, "POST", "/segmenter/status", token, [{"id": cohort_id, "base_time_list": base_times}])
    assert response.status_code == 200, response.get_json()
    (entry,) = response.get_json()
    assert entry["id"] == cohort_id
    return {r["base_time"]: r for r in entry["result"]}


def wait_ended(client, token, cohort_id, base_times, timeout=30.0) -> dict[str, dict]:
    def check():
        current = statuses(client, token, cohort_id, base_times)
        return current if all(r["status"] in ("succeed", "failed") for r in current.values()) else None
    return wait_until(check, timeout=timeout, interval=0.05, what=f"partitions {base_times} of {cohort_id} to end")


def partition_members(pg, redis_client, engine, cohort_id, base_time: str) -> set[str]:
    """The member keys stored for one partition (its version's own bitmap)."""
    with pg.cursor() as cur:
        cur.execute("SELECT bitmap_key FROM cohort_versions WHERE cohort_id = %s AND base_time = %s AND status = 'succeed'"
                    " ORDER BY id DESC LIMIT 1", (cohort_id, datetime.strptime(base_time, FORMAT).replace(tzinfo=ZONE)))
        (key,) = cur.fetchone()
    pg.commit()
    return set(engine.iter_keys(bitmaps.load(redis_client, key)))


def job_rows(pg, cohort_id, where="true", params=()) -> list[tuple]:
    with pg.cursor() as cur:
        cur.execute(f"SELECT id, kind, base_time, status FROM jobs WHERE cohort_id = %s AND {where} ORDER BY base_time, id",
                    (cohort_id, *params))
        rows = cur.fetchall()
    pg.commit()
    return rows


def counts(pg, project_id) -> tuple[int, int]:
    with pg.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM cohorts WHERE project_id = %s), "
                    "(SELECT count(*) FROM jobs WHERE project_id = %s)", (project_id, project_id))
        row = cur.fetchone()
    pg.commit()
    return row


SEED_CRON = "0 0 3 2,3,4 * ? *"


def test_run_once_rule_computes_its_first_partition(client, worker, store, pg, redis_client):
    project_id, token, engine = store
    content = relation(level_above(2), paid("absolute_between", ["2024-03-03", "2024-03-06"], 1))
    # The seed's example body, placeholders filled: app_push_list and a scheduler a run-once rule ignores.
    body = rule_body("paid_early_high_level", content, app_push_list=[0],
                     scheduler={"running": True, "cron": SEED_CRON})
    before = datetime.now(ZONE).replace(microsecond=0)
    created = create(client, token, body)
    after = datetime.now(ZONE)
    assert set(created) == {"id", "base_time"}
    base_time = datetime.strptime(created["base_time"], FORMAT).replace(tzinfo=ZONE)
    assert before <= base_time <= after, "base_time is now, written in the project's zone"

    expected = brute_level_above(2) & brute_paid_between(date(2024, 3, 3), date(2024, 3, 6), 1)
    assert expected, "the data set must make this rule non-trivial"
    done = wait_ended(client, token, created["id"], [created["base_time"]])[created["base_time"]]
    assert done["status"] == "succeed", done
    assert done["count"] == len(expected) and done["error_code"] == 0
    assert datetime.strptime(done["finished_time"], FORMAT).replace(tzinfo=ZONE) >= base_time
    published = bitmaps.load(redis_client, bitmaps.cohort_key("cohorts-test", project_id, created["id"]))
    assert set(engine.iter_keys(published)) == expected

    rule = call(client, "GET", f"/segmenter/rule/{created['id']}", token).get_json()
    assert rule["name"] == "paid_early_high_level" and rule["cname"] == "paid early high level"
    assert rule["type"] == 0 and rule["content"] == content and rule["failed_partition_count"] == 0
    assert rule["scheduler"]["cron"] == SEED_CRON and rule["scheduler"]["running"] is False
    assert rule["last_partition"] == {"base_time": created["base_time"], "finished_time": done["finished_time"],
                                      "count": len(expected), "app_push_list": [0], "status": "finish",
                                      "content": content}
    with pg.cursor() as cur:
        cur.execute("SELECT dialect, request_body, dynamic FROM cohorts WHERE id = %s", (created["id"],))
        assert cur.fetchone() == ("sensors", body, False)
    pg.commit()


def test_execute_computes_each_base_time_over_its_own_window(client, worker, store, pg, redis_client):
    _, token, engine = store
    cohort_id = create(client, token, rule_body("paid_twice_3d", relation(paid("relative_between", [0, 2, "day"], 2))))["id"]
    early, late, never = "2024-03-05 01:30:00", "2024-03-11 23:30:00", "2024-03-08 00:00:00"
    response = call(client, "POST", "/segmenter/execute", token,
                    [{"id": cohort_id, "base_time_list": [early, late, early.replace(" ", "T")]}])
    assert response.status_code == 200 and response.get_json() == {}
    done = wait_ended(client, token, cohort_id, [early, late])
    expected = {early: brute_paid_between(date(2024, 3, 3), date(2024, 3, 5), 2),
                late: brute_paid_between(date(2024, 3, 9), date(2024, 3, 11), 2)}
    assert expected[early] != expected[late] and all(expected.values())
    for base_time, members in expected.items():
        assert done[base_time]["status"] == "succeed" and done[base_time]["count"] == len(members)
        assert partition_members(pg, redis_client, engine, cohort_id, base_time) == members
    assert len(job_rows(pg, cohort_id, "kind = 'execute'")) == 2, "a repeated base time is one partition"
    assert statuses(client, token, cohort_id, [never])[never] == {
        "base_time": never, "count": 0, "status": "new", "finished_time": None, "error_code": 0, "error_message": None}


def test_a_partition_is_not_started_twice_while_it_computes(client, worker, store, pg, database_url):
    _, token, _ = store
    created = create(client, token, rule_body("high_level_once", relation(level_above(3))))
    cohort_id, base_time = created["id"], "2024-03-07 08:00:00"
    wait_ended(client, token, cohort_id, [created["base_time"]])
    blocker = psycopg2.connect(database_url)
    try:
        with blocker.cursor() as cur:
            # Holds the worker at its publish step (it locks the cohort row FOR UPDATE), while the API
            # can still insert jobs (the foreign key check only needs FOR KEY SHARE).
            cur.execute("SELECT id FROM cohorts WHERE id = %s FOR NO KEY UPDATE", (cohort_id,))
        body = [{"id": cohort_id, "base_time_list": [base_time]}]
        assert call(client, "POST", "/segmenter/execute", token, body).status_code == 200
        wait_until(lambda: statuses(client, token, cohort_id, [base_time])[base_time]["status"] == "computing",
                   what="the partition to compute")
        assert call(client, "POST", "/segmenter/execute", token, body).status_code == 200
        assert len(job_rows(pg, cohort_id, "kind = 'execute'")) == 1
    finally:
        blocker.rollback()
        blocker.close()
    done = wait_ended(client, token, cohort_id, [base_time])[base_time]
    assert done["status"] == "succeed" and done["count"] == len(brute_level_above(3))
    assert [row[3] for row in job_rows(pg, cohort_id, "kind = 'execute'")] == ["succeed"]


def cron_partitions(pg, cohort_id) -> list[datetime]:
    return [row[2] for row in job_rows(pg, cohort_id, "kind = 'cron'")]


def test_routine_rule_gains_partitions_on_its_cron_until_stopped(client, worker, beat, store, pg):
    _, token, _ = store
    body = rule_body("routine_high_level", relation(level_above(2)), rule_type=1,
                     scheduler={"running": True, "cron": "*/2 * * * * ?"})
    created = create(client, token, body)
    cohort_id, first = created["id"], created["base_time"]
    assert int(first[-2:]) % 2 == 0, "the first partition is the cron's next fire time"
    done = wait_ended(client, token, cohort_id, [first])[first]
    assert done["status"] == "succeed" and done["count"] == len(brute_level_above(2))
    fires = wait_until(lambda: (f := cron_partitions(pg, cohort_id)) and len(f) >= 3 and f, timeout=20,
                       what="three cron partitions")
    assert fires[0].astimezone(ZONE).strftime(FORMAT) == first
    assert all(f.second % 2 == 0 and f.microsecond == 0 for f in fires) and len(set(fires)) == len(fires)
    texts = [f.astimezone(ZONE).strftime(FORMAT) for f in fires]
    ended = wait_ended(client, token, cohort_id, texts)
    assert {r["count"] for r in ended.values()} == {len(brute_level_above(2))}

    stopped = create(client, token, {**body, "id": cohort_id, "scheduler": {"running": False, "cron": "*/2 * * * * ?"}})
    assert stopped == {"id": cohort_id, "base_time": None}
    with pg.cursor() as cur:
        cur.execute("SELECT updated_at, definition_version FROM cohorts WHERE id = %s", (cohort_id,))
        stopped_at, version = cur.fetchone()
    pg.commit()
    assert version == 1, "a schedule change keeps the definition version"
    time.sleep(4.5)  # two fire periods and more: none may produce a partition
    assert all(f <= stopped_at for f in cron_partitions(pg, cohort_id))
    listed = call(client, "GET", "/segmenter/rule/all", token).get_json()
    (mine,) = [r for r in listed["result"] if r["id"] == cohort_id]
    assert mine["scheduler"] == {"running": False, "cron": "*/2 * * * * ?", "execute_cron": "*/2 * * * * ?"}
    assert mine["type"] == 1 and mine["last_partition"]["status"] == "finish"
    assert mine["last_partition"]["base_time"] == max(cron_partitions(pg, cohort_id)).astimezone(ZONE).strftime(FORMAT)

    resumed = create(client, token, {**body, "id": cohort_id, "scheduler": {"running": True, "cron": "*/3 * * * * ?"}})
    assert int(resumed["base_time"][-2:]) % 3 == 0
    with pg.cursor() as cur:
        cur.execute("SELECT updated_at FROM cohorts WHERE id = %s", (cohort_id,))
        (resumed_at,) = cur.fetchone()
    pg.commit()
    later = wait_until(lambda: len(f := [x for x in cron_partitions(pg, cohort_id) if x > stopped_at]) >= 2 and f,
                       timeout=20, what="two partitions on the new cron")
    assert all(f > resumed_at and f.second % 3 == 0 for f in later), "the new cron applies from its next fire"
    assert later[0].astimezone(ZONE).strftime(FORMAT) == resumed["base_time"]
    assert call(client, "DELETE", f"/segmenter/rule/{cohort_id}", token).status_code == 200


def test_a_failing_partition_reports_its_error(client, worker, store):
    _, token, _ = store
    bad = {"type": "profile_rule", "field": "user.no_such_property", "function": "equal", "params": [1]}
    created = create(client, token, rule_body("on_missing_property", relation(bad)))
    done = wait_ended(client, token, created["id"], [created["base_time"]])[created["base_time"]]
    assert done["status"] == "failed" and done["count"] == 0
    assert done["error_code"] == 11 and "no_such_property" in done["error_message"]
    rule = call(client, "GET", f"/segmenter/rule/{created['id']}", token).get_json()
    assert rule["failed_partition_count"] == 1 and rule["last_partition"]["status"] == "failed"


def test_updating_a_rule_recomputes_it_under_a_new_definition_version(client, worker, store, pg):
    _, token, _ = store
    first = create(client, token, rule_body("level_above_x", relation(level_above(4))))
    create(client, token, rule_body("other_rule", relation(level_above(0))))
    wait_ended(client, token, first["id"], [first["base_time"]])
    taken = call(client, "POST", "/segmenter/rule", token,
                 {**rule_body("other_rule", relation(level_above(1))), "id": first["id"]})
    assert taken.status_code == 400 and list(taken.get_json()["errors"]) == ["name"]
    time.sleep(1)  # the update's partition is a different second from the creation's
    updated = create(client, token, {**rule_body("level_above_one", relation(level_above(1))), "id": first["id"]})
    assert updated["id"] == first["id"] and updated["base_time"] != first["base_time"]
    done = wait_ended(client, token, first["id"], [first["base_time"], updated["base_time"]])
    assert done[first["base_time"]]["count"] == len(brute_level_above(4))
    assert done[updated["base_time"]]["count"] == len(brute_level_above(1))
    with pg.cursor() as cur:
        cur.execute("SELECT name, definition_version FROM cohorts WHERE id = %s", (first["id"],))
        assert cur.fetchone() == ("level_above_one", 2)
    pg.commit()


def test_delete_removes_the_rule_its_partitions_and_bitmaps(client, worker, store, pg, redis_client):
    project_id, token, _ = store
    created = create(client, token, rule_body("to_delete", relation(level_above(1))))
    wait_ended(client, token, created["id"], [created["base_time"]])
    with pg.cursor() as cur:
        cur.execute("SELECT bitmap_key FROM cohort_versions WHERE cohort_id = %s", (created["id"],))
        keys = [r[0] for r in cur.fetchall()] + [bitmaps.cohort_key("cohorts-test", project_id, created["id"])]
    pg.commit()
    assert redis_client.exists(*keys) == len(keys) == 2
    response = call(client, "DELETE", f"/segmenter/rule/{created['id']}", token)
    assert response.status_code == 200 and response.get_json() == {}
    assert redis_client.exists(*keys) == 0
    assert job_rows(pg, created["id"]) == []
    assert call(client, "GET", f"/segmenter/rule/{created['id']}", token).status_code == 404
    assert call(client, "DELETE", f"/segmenter/rule/{created['id']}", token).status_code == 404


def test_import_rules_are_stored_but_not_computed(client, store, pg):
    _, token, _ = store
    created = create(client, token, {"id": 0, "name": "imported_once", "cname": "imported", "type": 5})
    assert created["base_time"] is None
    assert job_rows(pg, created["id"]) == []
    rule = call(client, "GET", f"/segmenter/rule/{created['id']}", token).get_json()
    assert rule["type"] == 5 and rule["last_partition"] is None and rule["failed_partition_count"] == 0
    refused = call(client, "POST", "/segmenter/execute", token,
                   [{"id": created["id"], "base_time_list": ["2024-03-01 00:00:00"]}])
    assert refused.status_code == 409 and list(refused.get_json()["errors"]) == ["[0].id"]
    assert job_rows(pg, created["id"]) == []


@pytest.mark.parametrize("path, body, error_path", [
    ("/segmenter/rule", rule_body("bad_function", relation(relation(
        {"type": "profile_rule", "field": "user.level", "function": "biggerThan", "params": [1]}))),
     "content.rules[0].rules[0].function"),
    ("/segmenter/rule", rule_body("sql_rule", relation(level_above(1)), rule_type=7), "type"),
    ("/segmenter/rule", rule_body("routine_no_cron", relation(level_above(1)), rule_type=1), "scheduler"),
    ("/segmenter/rule", rule_body("never_fires", relation(level_above(1)), rule_type=1,
                                  scheduler={"running": True, "cron": "0 0 0 30 2 ?"}), "scheduler.cron"),
    ("/segmenter/rule", rule_body("bad_window", relation(paid("relative_between", [1, "hour"], 1))),
     "content.rules[0].time_params"),
    ("/segmenter/rule", rule_body("unknown_cohort", relation(
        {"type": "profile_rule", "field": "user.segmenter_nobody", "function": "isTrue"})), "content.rules[0].field"),
    ("/segmenter/rule", rule_body("existing_name", relation(level_above(1))), "name"),
    ("/segmenter/execute", [{"id": 1, "base_time_list": ["2024-03-01"]}], "[0].base_time_list[0]"),
    ("/segmenter/execute", {"id": 1}, "_root"),
    ("/segmenter/status", [{"id": 1, "base_time_list": []}], "[0].base_time_list"),
])
def test_bad_bodies_are_refused_with_paths_and_nothing_written(client, store, pg, path, body, error_path):
    project_id, token, _ = store
    if error_path == "name":
        create(client, token, body)
    before = counts(pg, project_id)
    response = call(client, "POST", path, token, body)
    assert response.status_code == 400, response.get_json()
    errors = response.get_json()["errors"]
    assert error_path in errors, errors
    assert counts(pg, project_id) == before


def test_tokens_and_other_projects(client, store, api_project):
    _, token, _ = store
    _, _, other_headers = api_project
    mine = create(client, token, rule_body("private_rule", relation(level_above(1))))["id"]
    assert client.get("/segmenter/rule/all").status_code == 401
    assert call(client, "GET", "/segmenter/rule/all", "not-a-token").status_code == 401
    bearer = client.get(f"/segmenter/rule/{mine}", headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 200 and bearer.get_json()["name"] == "private_rule"
    partitions = [{"id": mine, "base_time_list": ["2024-03-01 00:00:00"]}]
    assert client.get(f"/segmenter/rule/{mine}", headers=other_headers).status_code == 404
    assert client.delete(f"/segmenter/rule/{mine}", headers=other_headers).status_code == 404
    assert client.post("/segmenter/execute", json=partitions, headers=other_headers).status_code == 404
    assert client.post("/segmenter/status", json=partitions, headers=other_headers).status_code == 404
    update = {**rule_body("private_rule", relation(level_above(2))), "id": mine}
    assert client.post("/segmenter/rule", json=update, headers=other_headers).status_code == 404
    assert client.get("/segmenter/rule/all", headers=other_headers).get_json() == {"total": 0, "result": []}
    listed = call(client, "GET", "/segmenter/rule/all", token).get_json()
    assert listed["total"] == len(listed["result"]) and mine in [r["id"] for r in listed["result"]]
