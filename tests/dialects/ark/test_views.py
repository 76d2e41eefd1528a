"""The Ark API `/uba/api/cohort` end to end: the seed's curl examples against a real server, every endpoint in
the seed's shape, Ark's error codes, the token + appKey pair, delete ownership, and a dynamic cohort's daily
run with a real worker and beat (its cron made fast in the test)."""

from __future__ import annotations

import shlex
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq
import pytest
from werkzeug.serving import make_server

from cohort_engine import db
from cohort_engine.project import ProjectEngine
from cohort_engine.sample import write_sample
from core.crons import daily_cron
from core.data import projects
from tests.conftest import set_timezone
from tests.services import create_token_project, start_beat, stop, wait_until

from .seed import SEED_APP_KEY, SEED_BODY, SEED_CURLS
from .test_translate import content, event, user

ZONE = ZoneInfo("Asia/Shanghai")
BASE_URL = "/uba/api/cohort"
SEED_HOST, SEED_TOKENS = "http://127.0.0.1:4005", ("4113c9cad1c301113783f433e254888c", "1b554f363d56238bf33a201620f2e9a9")
SHAPE = {"id", "code", "name", "dynamic", "userNumber", "status", "calculatedTime"}
MORE = {"source", "createdTime", "createdUser", "updatedTime", "content"}


@pytest.fixture(scope="module")
def ark(database_url, service_settings, tmp_path_factory):
    """A Shanghai project answering to the seed's appKey, with sample data whose signups reach the last 30 days.

    Returns (name, id, token, profiles {key: row}, startups [(key, time)]).
    """
    name, project_id, token = create_token_project(database_url, "ark")
    set_timezone(database_url, name, "Asia/Shanghai")
    with db.connection(database_url) as conn:
        projects.set_app_key(conn, project_id, SEED_APP_KEY)
    # The sample's signups end 60 days before its last day: a last day 45 days ahead puts some in the last 30.
    written = write_sample(tmp_path_factory.mktemp("ark-sample"), 600, 6000, seed=5,
                           end=datetime.now(UTC).date() + timedelta(days=45))
    engine = ProjectEngine(service_settings.engine, name)
    engine.ingest_users(written["users"])
    for part in written["events"]:
        engine.ingest_events(part)
    profiles = {row["distinct_id"]: row for row in pq.read_table(written["users"]).to_pylist()}
    startups, everyone = [], set(profiles)
    for part in written["events"]:
        for row in pq.read_table(part, columns=["distinct_id", "event", "time"]).to_pylist():
            everyone.add(row["distinct_id"])
            if row["event"] == "$startup":
                startups.append((row["distinct_id"], row["time"]))
    return name, project_id, token, profiles, startups, everyone


def headers(token, app_key=SEED_APP_KEY):
    return {"token": token, "appKey": app_key}


def call(client, method, path, token, body=None, app_key=SEED_APP_KEY, **query):
    return client.open(BASE_URL + path, method=method, json=body, headers=headers(token, app_key), query_string=query)


def cohort_rows(database_url, project_id):
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, name, owner, cron, daily_refresh, dynamic FROM cohorts WHERE project_id = %s",
                    (project_id,))
        return cur.fetchall()


def wait_status(client, token, cohort_id, wanted=("success", "failed")) -> dict:
    def check():
        view = call(client, "GET", f"/{cohort_id}", token).get_json()
        return view if view["status"] in wanted else None
    return wait_until(check, timeout=60, interval=0.05, what=f"cohort {cohort_id} to be {wanted}")


def last_job(database_url, cohort_id, kind=None):
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT base_time, status FROM jobs WHERE cohort_id = %s AND (%s::text IS NULL OR kind = %s)"
                    " ORDER BY id DESC LIMIT 1", (cohort_id, kind, kind))
        return cur.fetchone()


def signed_up_within(profiles, base: datetime, days: int) -> set[str]:
    """Brute force of `user.$signup_time RELATIVE_TIME_OF_CUURENT [days, day, within]` (email rules pass all)."""
    start = (base.astimezone(ZONE).replace(tzinfo=None) - timedelta(days=days)).replace(tzinfo=ZONE)
    return {k for k, p in profiles.items() if p["$signup_time"] is not None and start <= p["$signup_time"] <= base}


def started_in_last(startups, base: datetime, days: int) -> set[str]:
    today = base.astimezone(ZONE).date()
    return {k for k, t in startups if today - timedelta(days=days - 1) <= t.astimezone(ZONE).date() <= today}


@pytest.fixture
def server(app):
    """The app behind a real HTTP server on loopback (curl talks to it as to an Ark host)."""
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def run_curl(command: str, host: str, token: str, cohort_id: int | None = None):
    """One of the seed's curl commands with only the host, the token (and the example's cohort id 2) replaced."""
    for seed_token in SEED_TOKENS:
        command = command.replace(seed_token, token)
    command = command.replace(SEED_HOST, host)
    if cohort_id is not None:
        command = command.replace("/uba/api/cohort/2", f"/uba/api/cohort/{cohort_id}")
    done = subprocess.run([*shlex.split(command), "-s", "-w", "\n%{http_code}"], capture_output=True, text=True,
                          timeout=30, check=True)
    body, _, status = done.stdout.rpartition("\n")
    import json
    return int(status), json.loads(body)


def test_the_seeds_curl_examples_run_unchanged(ark, server, client, worker, database_url):
    name, project_id, token, profiles, _, _ = ark
    status, created = run_curl(SEED_CURLS["create"], server, token)
    assert status == 200, created
    assert set(created) == {"id", "code", "name", "dynamic", "createTime", "content"}
    cohort_id = created["id"]
    assert (created["code"], created["name"], created["dynamic"], created["content"]) == (
        f"arkfq_{cohort_id}", "apiTest02", 0, SEED_BODY["content"])
    datetime.strptime(created["createTime"], "%Y-%m-%d %H:%M:%S")
    wait_status(client, token, cohort_id, ("success",))
    base = last_job(database_url, cohort_id)[0]
    expected = signed_up_within(profiles, base, 30)
    assert expected and len(expected) < len(profiles)

    status, one = run_curl(SEED_CURLS["get"], server, token, cohort_id)
    assert status == 200 and set(one) == SHAPE
    assert (one["code"], one["status"], one["userNumber"], one["dynamic"]) == (f"arkfq_{cohort_id}", "success",
                                                                              len(expected), 0)
    status, listed = run_curl(SEED_CURLS["list"], server, token)
    assert status == 200 and [c["id"] for c in listed] == [cohort_id]
    assert set(listed[0]) == SHAPE | MORE and listed[0]["content"] == SEED_BODY["content"]

    # The same rules as a native tree count the same users.
    native = client.post("/api/v1/cohorts", headers={"Authorization": f"Bearer {token}"}, json={
        "name": "seed-as-native", "definition": {"op": "and", "children": [
            {"op": "not", "child": {"type": "ids", "keys": []}},
            {"type": "profile", "property": "$email", "cmp": "ne", "values": ["xx1", "xx2"]},
            {"type": "profile", "property": "$signup_time", "cmp": "within_last", "values": [30, "day"]},
            {"type": "event", "event": "$startup", "window": {"start": "2019-09-09", "end": "2019-09-15"},
             "cmp": "gte", "values": [0]}]}}).get_json()
    native_id = native["cohort"]["id"]
    job = wait_until(lambda: (lambda j: j if j["status"] == "succeed" else None)(client.get(
        f"/api/v1/jobs/{native['job']['id']}", headers={"Authorization": f"Bearer {token}"}).get_json()),
        timeout=60, what="the native cohort")
    assert job["result"]["count"] == len(expected)

    status, again = run_curl(SEED_CURLS["recalculate"], server, token, cohort_id)
    assert (status, again) == (200, {"id": cohort_id, "status": "calculating"})
    wait_status(client, token, cohort_id, ("success",))
    status, deleted = run_curl(SEED_CURLS["delete"], server, token, cohort_id)
    assert (status, deleted) == (200, {"success": 0})
    assert call(client, "GET", f"/{cohort_id}", token).status_code == 400
    client.delete(f"/api/v1/cohorts/{native_id}", headers={"Authorization": f"Bearer {token}"})


def test_need_more_failed_status_and_the_status_filter(ark, client, worker):
    _, _, token, _, startups, everyone = ark
    good = call(client, "POST", "", token, {"name": "startup-7d", "dynamic": 0, "content": content(
        ([event("event.$startup", relative="6,0,day")], "AND"))}, loginUser="ana@example.com").get_json()
    bad = call(client, "POST", "", token, {"name": "unknown-prop", "dynamic": 0, "content": content(
        ([user("user.no_such_property", "EQ", ["x"])], "AND"))}).get_json()
    view = wait_status(client, token, good["id"])
    failed = wait_status(client, token, bad["id"])
    more = call(client, "GET", f"/{good['id']}", token, needMore="true").get_json()
    assert set(more) == SHAPE | MORE
    assert (more["source"], more["createdUser"], more["status"]) == ("自定义分群", "ana@example.com", "success")
    assert more["content"]["ruleGroup"][0]["rules"][0]["expression"] == "event.$startup"
    assert view["calculatedTime"] >= more["createdTime"]
    assert failed["status"] == "failed" and failed["errorCode"] == "unknown_property"
    assert call(client, "GET", f"/{bad['id']}", token, needMore="1").get_json()["createdUser"] == "API"
    by_status = {s: [c["id"] for c in call(client, "GET", "", token, status=s).get_json()]
                 for s in ("success", "failed", "calculating")}
    assert good["id"] in by_status["success"] and by_status["failed"] == [bad["id"]]
    assert good["id"] not in by_status["failed"] + by_status["calculating"]
    for cohort in (good, bad):
        assert call(client, "DELETE", f"/{cohort['id']}", token,
                    loginUser="ana@example.com" if cohort is good else "").get_json() == {"success": 0}


def test_delete_ownership_follows_login_user(ark, client, database_url):
    _, project_id, token, _, _, _ = ark
    body = {"dynamic": 0, "content": content(([user("user.xwho", "NOT_NULL")], "AND"))}
    by_api = call(client, "POST", "", token, {**body, "name": "by-api"}).get_json()["id"]
    by_bo = call(client, "POST", "", token, {**body, "name": "by-bo"}, loginUser="bo@example.com").get_json()["id"]
    assert {r[1]: r[2] for r in cohort_rows(database_url, project_id)} == {"by-api": None, "by-bo": "bo@example.com"}
    refused = [call(client, "DELETE", f"/{by_api}", token, loginUser="bo@example.com"),
               call(client, "DELETE", f"/{by_bo}", token),
               call(client, "DELETE", f"/{by_bo}", token, loginUser="cy@example.com")]
    for response in refused:
        assert response.status_code == 400 and response.get_json()["code"] == 400
        assert "only its creator can delete it" in response.get_json()["message"]
    assert len(cohort_rows(database_url, project_id)) == 2
    assert call(client, "DELETE", f"/{by_api}", token).get_json() == {"success": 0}
    assert call(client, "DELETE", f"/{by_bo}", token, loginUser="bo@example.com").get_json() == {"success": 0}
    assert cohort_rows(database_url, project_id) == []


def test_token_and_app_key_must_be_a_pair(ark, client, database_url):
    name, _, token, _, _, _ = ark
    other, _, other_token = create_token_project(database_url, "arko")
    cases = [({}, "missing"), ({"token": token}, "appKey"), ({"appKey": SEED_APP_KEY}, "missing token"),
             ({"token": "nope-nope", "appKey": SEED_APP_KEY}, "invalid token"),
             ({"token": token, "appKey": other}, "does not belong"),
             ({"token": " ", "Authorization": f"Bearer {token}", "appKey": name}, "empty token header"),
             ({"token": other_token, "appKey": SEED_APP_KEY}, "does not belong")]
    for sent, words in cases:
        response = client.get(BASE_URL, headers=sent)
        assert response.status_code == 401, sent
        body = response.get_json()
        assert body["code"] == 401 and words in body["message"], (sent, body)
    for sent in ({"token": token, "appKey": name}, {"token": token, "appKey": SEED_APP_KEY},
                 {"Authorization": f"Bearer {token}", "appKey": name}, {"token": other_token, "appKey": other}):
        assert client.get(BASE_URL, headers=sent).status_code == 200, sent


def test_errors_in_arks_shape_and_nothing_written(ark, client, database_url):
    _, project_id, token, _, _, _ = ark
    body = {"name": "taken", "dynamic": 0, "content": content(([user("user.xwho", "NOT_NULL")], "AND"))}
    first = call(client, "POST", "", token, body).get_json()["id"]
    native = client.post("/api/v1/cohorts", headers={"Authorization": f"Bearer {token}"}, json={
        "name": "native-one", "definition": {"type": "ids", "keys": []}}).get_json()["cohort"]["id"]
    before = cohort_rows(database_url, project_id)
    duplicate = call(client, "POST", "", token, body)
    assert duplicate.status_code == 400 and duplicate.get_json()["code"] == 50101
    assert "name" in duplicate.get_json()["data"]
    bad = call(client, "POST", "", token, {**body, "name": "bad", "content": content(
        ([user("user.city", "GT", [1, 2]), event(relative="0,6,day")], "AND"))})
    assert bad.status_code == 400 and bad.get_json()["code"] == 400
    assert set(bad.get_json()["data"]) == {"content.ruleGroup[0].rules[0].params",
                                           "content.ruleGroup[0].rules[1].eventRelativeTimeParam"}
    wrong_type = client.post(BASE_URL, data="{}", headers={**headers(token), "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415 and wrong_type.get_json()["code"] == 415
    not_json = client.post(BASE_URL, data="{", headers={**headers(token), "Content-Type": "application/json"})
    assert not_json.status_code == 400 and not_json.get_json()["code"] == 400
    for path, query in ((f"/{native}", {}), ("/999999", {}), (f"/{2**40}", {}), (f"/{first}", {"needMore": "maybe"}),
                        ("", {"status": "done"})):
        response = call(client, "GET", path, token, **query)
        assert response.status_code == 400 and set(response.get_json()) >= {"code", "message"}, (path, query)
    for method, path in (("POST", f"/{native}/recalculate"), ("DELETE", f"/{native}")):
        assert call(client, method, path, token).status_code == 400
    assert cohort_rows(database_url, project_id) == before
    call(client, "DELETE", f"/{first}", token)
    client.delete(f"/api/v1/cohorts/{native}", headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def beat(service_env, maintenance_worker, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ark-beat")
    process = start_beat(service_env, folder / "schedule", folder / "beat.log")
    yield process
    stop(process)


def test_a_dynamic_cohort_is_recomputed_at_the_daily_time(ark, client, worker, beat, database_url):
    name, project_id, token, _, startups, _ = ark
    created = call(client, "POST", "", token, {"name": "daily-startups", "dynamic": 1, "content": content(
        ([event("event.$startup", relative="6,0,day")], "AND"))}).get_json()
    cohort_id = created["id"]
    assert created["dynamic"] == 1
    with db.connection(database_url) as conn:
        project = projects.by_id(conn, project_id)
    assert [r[3:] for r in cohort_rows(database_url, project_id) if r[0] == cohort_id] == [
        (daily_cron(project), True, True)]
    assert daily_cron(project) == "0 4 * * *"  # 04:00 in Asia/Shanghai, the default refresh time
    wait_status(client, token, cohort_id, ("success",))
    # The test's fast cron: every second instead of every day.
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE cohorts SET cron = '* * * * * *' WHERE id = %s", (cohort_id,))
    try:
        wait_until(lambda: (last_job(database_url, cohort_id, "cron") or (None, None))[1] == "succeed", timeout=30,
                   interval=0.1, what="a daily run")
    finally:
        with db.connection(database_url) as conn, conn.cursor() as cur:
            cur.execute("UPDATE cohorts SET scheduler_running = false WHERE id = %s", (cohort_id,))
    fire = last_job(database_url, cohort_id, "cron")[0]
    view = wait_status(client, token, cohort_id, ("success",))
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT v.base_time, v.count FROM cohorts c JOIN cohort_versions v ON v.id = c.latest_version_id"
                    " WHERE c.id = %s", (cohort_id,))
        published_base, count = cur.fetchone()
    assert published_base >= fire  # a run of the daily schedule is what GET shows
    expected = started_in_last(startups, published_base, 7)
    assert expected and view["userNumber"] == count == len(expected)
    assert call(client, "DELETE", f"/{cohort_id}", token).get_json() == {"success": 0}


def test_daily_refresh_time_reaches_new_cohorts(ark, client, database_url):
    name, project_id, token, _, _, _ = ark
    with db.connection(database_url) as conn:
        projects.set_daily_refresh_time(conn, project_id, "05:45")
    try:
        created = call(client, "POST", "", token, {"name": "at-0545", "dynamic": 1, "content": content(
            ([user("user.xwho", "NOT_NULL")], "AND"))}).get_json()
        assert [r[3] for r in cohort_rows(database_url, project_id) if r[0] == created["id"]] == ["45 5 * * *"]
        call(client, "DELETE", f"/{created['id']}", token)
    finally:
        with db.connection(database_url) as conn:
            projects.set_daily_refresh_time(conn, project_id, "04:00")


def test_the_readme_ark_example_is_accepted(ark, client):
    """The README's Ark calls, as written but for the token (dev-token) and appKey (default) of `make run`."""
    import json
    import re

    from tests.services import ROOT

    _, _, token, _, _, _ = ark
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("### Analysys Ark", 1)[1].split("\n### ", 1)[0]
    bodies = re.findall(r"-d '(.*?)'\n", section, flags=re.S)
    assert len(bodies) == 1
    created = call(client, "POST", "", token, json.loads(bodies[0]))
    assert created.status_code == 200, created.get_json()
    assert "/uba/api/cohort/2?needMore=true" in section
    view = call(client, "GET", f"/{created.get_json()['id']}", token, needMore="true").get_json()
    assert set(view) == SHAPE | MORE and view["dynamic"] == 1
    assert call(client, "DELETE", f"/{view['id']}", token).get_json() == {"success": 0}
