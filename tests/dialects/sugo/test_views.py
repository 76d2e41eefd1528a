"""Sugo /ant requests refused before any work (validation, allowlist), and the embedded broker /druid/v2.

The job-running side (real worker, seeds end to end) is tests/tasks/test_sugo_jobs.py. Expected
Druid answers here come from a brute force over the sample Parquet files, never from the engine.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from cohort_engine import db
from tests.services import allow_sugo_targets, create_sample_project, sugo_redis_target

# The Sugo Redis target configured for the test project: a database that is not the service's.
REDIS, SUGO_DB = sugo_redis_target()
EMBEDDED = "http://127.0.0.1:6061/druid/v2?pretty"


class CountingListener:
    """A TCP listener that only counts connections: proof that a refused address was never contacted."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self.stopped.set()
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture(scope="module")
def sugo_project(database_url, service_settings, tmp_path_factory):
    """A project holding a small sample data set; returns (name, id, token, written files)."""
    name, project_id, token, written = create_sample_project(
        database_url, service_settings.engine, tmp_path_factory.mktemp("sugo-api"), 400, 6000, seed=3, prefix="sg")
    allow_sugo_targets(database_url, project_id, redis=[f"{REDIS}/{SUGO_DB}"])
    return name, project_id, token, written


@pytest.fixture
def listener():
    counting = CountingListener()
    yield counting
    counting.close()


@pytest.fixture
def lone_listener():
    """A CountingListener on 127.0.0.2: a client of the session still retrying some freed 127.0.0.1 port
    (a stopped test server's) can never land on it and be counted as contact."""
    counting = CountingListener("127.0.0.2")
    yield counting
    counting.close()


@pytest.fixture
def sugo_client(service_settings, celery_app, sugo_project):
    from app import create_app

    settings = replace(service_settings, sugo_project=sugo_project[0], sugo_embedded_brokers="127.0.0.1:6061")
    return create_app({"TESTING": True, "SETTINGS": settings, "CELERY": celery_app}).test_client()


def job_count(database_url, project_id) -> int:
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs WHERE project_id = %s", (project_id,))
        return cur.fetchone()[0]


def delete_jobs(database_url, project_id) -> None:
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM jobs WHERE project_id = %s", (project_id,))


def user_group_query(host_and_ports=REDIS, group="g1"):
    return {"queryType": "user_group", "dataSource": "schedule_desc", "granularity": "all", "intervals": "1000/3000",
            "filter": {"type": "selector", "dimension": "sugo_province", "value": "广东省"},
            "dimension": "distinct_id", "dataConfig": {"hostAndPorts": host_and_ports, "clusterMode": False,
                                                       "db": SUGO_DB, "groupId": group}}


# -- refusals: 400 naming the field, nothing contacted, no job written ---------------------------------


def test_broker_url_outside_allowlist_is_refused_without_contact(sugo_client, sugo_project, listener, database_url):
    before = job_count(database_url, sugo_project[1])
    response = sugo_client.post("/ant/usergroup/single", json={
        "brokerUrl": f"http://127.0.0.1:{listener.port}/druid/v2?pretty", "query": user_group_query(), "append": True})
    assert response.status_code == 400
    errors = response.get_json()["errors"]
    assert list(errors) == ["brokerUrl"] and f"127.0.0.1:{listener.port}" in errors["brokerUrl"][0]
    assert listener.accepted == 0
    assert job_count(database_url, sugo_project[1]) == before


def test_host_and_ports_outside_allowlist_is_refused_without_contact(sugo_client, sugo_project, listener,
                                                                     database_url):
    before = job_count(database_url, sugo_project[1])
    body = [
        {"type": "tindex", "brokerUrl": EMBEDDED, "query": user_group_query()},
        {"type": "usergroup", "op": "or", "query": {"dataConfig": {
            "hostAndPorts": f"{REDIS},127.0.0.1:{listener.port}", "clusterMode": False, "db": SUGO_DB,
            "groupId": "x"}}},
        {"type": "finalGroup", "query": {"dataConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": "out"}}, "append": True},
    ]
    response = sugo_client.post("/ant/usergroup/multi", json=body)
    assert response.status_code == 400
    assert list(response.get_json()["errors"]) == ["[1].query.dataConfig.hostAndPorts"]
    assert listener.accepted == 0
    assert job_count(database_url, sugo_project[1]) == before


def test_hproxy_and_broker_lists_outside_allowlist_are_refused(sugo_client, sugo_project, listener, database_url):
    before = job_count(database_url, sugo_project[1])
    response = sugo_client.post("/ant/tag/query/batchUpdate", json={
        "broker": f"127.0.0.1:6061,127.0.0.1:{listener.port}", "hproxy": f"127.0.0.1:{listener.port}",
        "dataSource": "ssss", "dimMap": {"distinct_id": "distinct_id"},
        "query": {"queryType": "groupBy", "dataSource": "schedule_desc", "intervals": "1000/3000",
                  "granularity": "all", "dimensions": ["distinct_id"]}})
    assert response.status_code == 400
    assert set(response.get_json()["errors"]) == {"broker", "hproxy"}
    response = sugo_client.post("/ant/tag/usergroup/batchUpdate", json={
        "hproxyUrl": f"http://127.0.0.1:{listener.port}/druid/proxy/batchupdate/ssss", "dataSource": "ssss",
        "primaryColumn": "distinct_id", "userGroupConfig": {"hostAndPorts": f"127.0.0.1:{listener.port}",
                                                            "groupId": "g"},
        "dimData": {"s_a": "x"}})
    assert response.status_code == 400
    assert set(response.get_json()["errors"]) == {"hproxyUrl", "userGroupConfig.hostAndPorts"}
    assert listener.accepted == 0
    assert job_count(database_url, sugo_project[1]) == before


def test_project_targets_admit_exactly_the_configured_addresses(service_settings, database_url, listener):
    from core.data import sugo_targets
    from dialects.sugo.schemas import targets_for

    settings = replace(service_settings, sugo_embedded_brokers="127.0.0.1:6061,localhost:6061")
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO projects (name) VALUES (%s) RETURNING id", ("ta" + uuid.uuid4().hex[:8],))
        project_id = cur.fetchone()[0]
    allow_sugo_targets(database_url, project_id, redis=[f"127.0.0.1:{listener.port}/4", "[::1]:7000"],
                       hproxy=["example.org:8085"], broker=[f"127.0.0.1:{listener.port}"])
    with db.connection(database_url) as conn:
        targets = targets_for(settings, sugo_targets.for_project(conn, project_id))
    assert targets.redis_allow(4)("127.0.0.1", listener.port) and targets.redis_allow(0)("::1", 7000)
    assert not targets.redis_allow(0)("127.0.0.1", listener.port)  # same host:port, another db
    assert not targets.redis_allow(4)("127.0.0.1", listener.port + 1)
    assert targets.hproxy_allowed("Example.org", 8085) and not targets.hproxy_allowed("example.org", 8086)
    assert not targets.broker_allowed("example.org", 8085)  # an hproxy target is no broker target
    assert targets.broker_allowed("127.0.0.1", listener.port) and targets.broker_allowed("localhost", 6061)
    assert targets.is_embedded("http://localhost:6061/druid/v2/") and not targets.is_embedded("127.0.0.1:8082")


# -- authentication: the project's token; token-less only for the project the operator names ---------------


@pytest.fixture
def strict_client(service_settings, celery_app):
    """The app as deployed by default: COHORTS_SUGO_PROJECT unset."""
    from app import create_app
    from core.settings import Settings

    assert Settings().sugo_project == ""
    settings = replace(service_settings, sugo_project=Settings().sugo_project, queue="unused-" + uuid.uuid4().hex[:8])
    return create_app({"TESTING": True, "SETTINGS": settings, "CELERY": celery_app}).test_client()


@pytest.mark.parametrize("method, path", [
    ("post", "/ant/usergroup/single"), ("post", "/ant/usergroup/multi"), ("post", "/ant/tag/usergroup/batchUpdate"),
    ("post", "/ant/tag/query/batchUpdate"), ("get", "/ant/jobs/1"), ("post", "/druid/v2"), ("post", "/druid/v2/"),
    ("get", "/druid/v2/datasources"), ("delete", "/druid/v2/some-query"),
])
def test_token_less_calls_are_401_unless_the_operator_names_a_project(strict_client, method, path):
    response = getattr(strict_client, method)(path, json={"queryType": "timeseries"})
    assert response.status_code == 401
    assert "COHORTS_SUGO_PROJECT" in response.get_json()["error"]
    bad = getattr(strict_client, method)(path, json={}, headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401 and bad.get_json()["error"] == "invalid token"


def test_a_token_opens_its_own_project_only_through_the_shared_token_cache(strict_client, sugo_project,
                                                                             database_url):
    headers = {"Authorization": f"Bearer {sugo_project[2]}"}
    assert strict_client.get("/druid/v2/datasources", headers=headers).status_code == 200
    # Sugo's ?token= spelling names the same project.
    assert strict_client.get(f"/druid/v2/datasources?token={sugo_project[2]}").status_code == 200
    # One resolver for every API: the token is now in app/auth.py's cache.
    cache = strict_client.application.extensions["token_cache"]
    assert cache[sugo_project[2]][0]["id"] == sugo_project[1]
    # A Sugo job of another project is not found with this token.
    from core.data import jobs
    from tests.services import create_token_project

    other = create_token_project(database_url, "so")
    with db.connection(database_url) as conn:
        job, _ = jobs.insert(conn, other[1], "usergroup", params={"endpoint": "single", "request": {}})
    assert strict_client.get(f"/ant/jobs/{job['id']}", headers=headers).status_code == 404
    assert strict_client.get(f"/ant/jobs/{job['id']}",
                             headers={"Authorization": f"Bearer {other[2]}"}).status_code == 200
    delete_jobs(database_url, other[1])  # never run: no sweeper may resend it later in the session


# -- the service's own Redis databases and other projects' targets ------------------------------------------


def own_databases(service_settings) -> list[tuple[str, int]]:
    from urllib.parse import urlsplit

    found = []
    for url in (service_settings.engine.redis_url, service_settings.broker_url):
        parts = urlsplit(url)
        found.append((f"{parts.hostname}:{parts.port or 6379}", int(parts.path.strip("/") or 0)))
    return found


def test_the_services_own_redis_databases_are_never_a_target(service_settings, sugo_client, sugo_project,
                                                            database_url, redis_client):
    """Even if an operator allowed them: a cohort bitmap key and the broker's db are refused, nothing touched."""
    (bitmaps, bitmaps_db), (broker, broker_db) = own_databases(service_settings)
    allow_sugo_targets(database_url, sugo_project[1], redis=[f"{bitmaps}/{bitmaps_db}", f"{broker}/{broker_db}"])
    key = "cohorts-test:p1:cohort:68"
    redis_client.set(key, b"bitmap bytes")
    before = job_count(database_url, sugo_project[1])
    loopback_alias = "localhost:" + bitmaps.rsplit(":", 1)[1]
    cases = [
        ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": dict(user_group_query(), dataConfig={
            "hostAndPorts": bitmaps, "db": bitmaps_db, "groupId": key})}, "query.dataConfig.db"),
        ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": dict(user_group_query(), dataConfig={
            "hostAndPorts": loopback_alias, "db": bitmaps_db, "groupId": key})}, "query.dataConfig.db"),
        ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": dict(user_group_query(), dataConfig={
            "hostAndPorts": broker, "db": broker_db, "groupId": "x"})}, "query.dataConfig.db"),
        ("/ant/usergroup/multi", [
            {"type": "uindex", "brokerUrl": EMBEDDED, "query": dict(user_group_query(), dataConfig={
                "hostAndPorts": bitmaps, "db": bitmaps_db, "groupId": key})},
            {"type": "finalGroup", "query": {"dataConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": "o"}}}],
         "[0].query.dataConfig.db"),
        ("/ant/tag/usergroup/batchUpdate", {
            "hproxy": "127.0.0.1:1", "dataSource": "s", "primaryColumn": "distinct_id",
            "userGroupConfig": {"hostAndPorts": bitmaps, "db": bitmaps_db, "groupId": key}, "dimData": {"s_a": "1"}},
         "userGroupConfig.db"),
    ]
    for path, body, field in cases:
        response = sugo_client.post(path, json=body)
        assert response.status_code == 400, response.get_json()
        assert field in response.get_json()["errors"], response.get_json()
        assert "own Redis" in response.get_json()["errors"][field][0]
    assert redis_client.get(key) == b"bitmap bytes"
    assert job_count(database_url, sugo_project[1]) == before
    redis_client.delete(key)


def test_a_service_whose_bitmaps_live_in_db_0_refuses_host_and_ports_without_db(service_settings, celery_app,
                                                                               sugo_project):
    from app import create_app

    host = REDIS.rsplit(":", 1)[0]
    settings = replace(service_settings, sugo_project=sugo_project[0],
                       engine=replace(service_settings.engine, redis_url=f"redis://{host}:6379/0"))
    client = create_app({"TESTING": True, "SETTINGS": settings, "CELERY": celery_app}).test_client()
    response = client.post("/ant/usergroup/single", json={"brokerUrl": EMBEDDED, "query": dict(
        user_group_query(), dataConfig={"hostAndPorts": f"{host}:6379", "groupId": "cohorts:p1:cohort:68"})})
    assert response.status_code == 400
    assert "own Redis" in response.get_json()["errors"]["query.dataConfig.hostAndPorts"][0]


def test_another_projects_targets_are_refused_without_contact(service_settings, celery_app, sugo_project,
                                                               database_url, lone_listener):
    from app import create_app
    from tests.services import create_token_project

    listener = lone_listener
    target = f"{listener.host}:{listener.port}"
    owner = create_token_project(database_url, "ow")
    allow_sugo_targets(database_url, owner[1], redis=[f"{target}/0"], hproxy=[target], broker=[target])
    intruder = create_token_project(database_url, "in")
    from workers.celery_app import create_celery

    # A sender on a queue no worker consumes: the owner's accepted jobs must never run (and contact).
    settings = replace(service_settings, queue="unused-" + uuid.uuid4().hex[:8])
    client = create_app({"TESTING": True, "SETTINGS": settings, "CELERY": create_celery(settings)}).test_client()
    bodies = [
        ("/ant/usergroup/single", {"brokerUrl": f"http://{target}/druid/v2", "query": user_group_query(
            target)}, {"brokerUrl", "query.dataConfig.hostAndPorts"}),
        ("/ant/tag/usergroup/batchUpdate", {
            "hproxy": target, "dataSource": "s", "primaryColumn": "distinct_id",
            "userGroupConfig": {"hostAndPorts": target, "groupId": "g"}, "dimData": {"s_a": "1"}},
         {"hproxy", "userGroupConfig.hostAndPorts"}),
    ]
    for path, body, fields in bodies:
        body = json.loads(json.dumps(body))
        if "query" in body:
            body["query"]["dataConfig"].pop("db")
        response = client.post(path, json=body, headers={"Authorization": f"Bearer {intruder[2]}"})
        assert response.status_code == 400
        assert set(response.get_json()["errors"]) == fields
        assert "allowed for this project" in json.dumps(response.get_json())
        # The owner's own token is accepted for the very same body (answered 202: no worker on this queue).
        accepted = client.post(path + "?async=true", json=body, headers={"Authorization": f"Bearer {owner[2]}"})
        assert accepted.status_code == 202, accepted.get_json()
    assert listener.accepted == 0
    assert job_count(database_url, intruder[1]) == 0
    delete_jobs(database_url, owner[1])  # the accepted ones: no worker ever consumes their queue


# -- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, body, field", [
    ("/ant/usergroup/single", {"query": user_group_query()}, "brokerUrl"),
    ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": dict(user_group_query(), queryType="groupBy")},
     "query.queryType"),
    ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": dict(user_group_query(), dataConfig={
        "hostAndPorts": REDIS, "db": SUGO_DB})}, "query.dataConfig.groupId"),
    ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": dict(user_group_query(), dataConfig={
        "hostAndPorts": "127.0.0.1", "groupId": "g"})}, "query.dataConfig.hostAndPorts"),
    ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": user_group_query(), "append": "maybe"}, "append"),
    ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": user_group_query(), "append": "yes"}, "append"),
    ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": user_group_query(), "append": 1}, "append"),
    ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": dict(user_group_query(), context="fast")},
     "query.context"),
    ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": dict(user_group_query(), context={"timeout": "9"})},
     "query.context.timeout"),
    ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": dict(user_group_query(), dataConfig=dict(
        user_group_query()["dataConfig"], clusterMode="yes"))}, "query.dataConfig.clusterMode"),
    ("/ant/usergroup/single", [1], "_body"),
    ("/ant/usergroup/multi", [{"type": "tindex", "brokerUrl": EMBEDDED, "query": user_group_query()},
                              {"type": "usergroup", "query": {"dataConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": "a"}}},
                              {"type": "finalGroup", "query": {"dataConfig": {"hostAndPorts": REDIS, "db": SUGO_DB,
                                                                              "groupId": "o"}}}], "[1].op"),
    ("/ant/usergroup/multi", [{"type": "tindex", "query": user_group_query()},
                              {"type": "finalGroup", "query": {"dataConfig": {"hostAndPorts": REDIS, "db": SUGO_DB,
                                                                              "groupId": "o"}}}], "[0].brokerUrl"),
    ("/ant/usergroup/multi", [{"type": "tindex", "brokerUrl": EMBEDDED, "query": user_group_query()}], "_body"),
    ("/ant/usergroup/multi", [{"type": "tindex", "brokerUrl": EMBEDDED, "query": user_group_query()},
                              {"type": "finalGroup", "op": "xor", "query": {"dataConfig": {
                                  "hostAndPorts": REDIS, "db": SUGO_DB, "groupId": "o"}}}], "[1].op"),
    ("/ant/usergroup/multi", [{"type": "weird", "query": {}}], "[0].type"),
    ("/ant/tag/usergroup/batchUpdate", {
        "hproxyUrl": "http://127.0.0.1:6061/x", "dataSource": "s", "primaryColumn": "distinct_id",
        "userGroupConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": "g"}, "dimData": {"s_test2": "a", "mi_x": "1,2"},
        "appendFlags": {"s_test2": True, "mi_x": True}}, "appendFlags.s_test2"),
    ("/ant/tag/usergroup/batchUpdate", {
        "hproxyUrl": "http://127.0.0.1:6061/x", "dataSource": "s", "primaryColumn": "distinct_id",
        "userGroupConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": "g"}, "dimData": {"s_test2": ["a", "b"]}},
     "dimData.s_test2"),
    ("/ant/tag/usergroup/batchUpdate", {
        "hproxyUrl": "http://127.0.0.1:6061/x", "dataSource": "s", "primaryColumn": "distinct_id",
        "userGroupConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": "g"}, "dimData": {}}, "dimData"),
    ("/ant/tag/query/batchUpdate", {
        "brokerUrl": EMBEDDED, "hproxyUrl": "http://127.0.0.1:6061/x", "dataSource": "s",
        "dimMap": {"count": "i_count"}, "query": {"queryType": "groupBy"}}, "dimMap"),
    ("/ant/tag/query/batchUpdate", {
        "brokerUrl": EMBEDDED, "hproxyUrl": "http://127.0.0.1:6061/x", "dataSource": "s",
        "dimMap": {"distinct_id": "distinct_id"}, "appendFlags": {"i_count": True},
        "query": {"queryType": "timeseries"}}, "query.queryType"),
] + [("/ant/tag/query/batchUpdate", {
    "brokerUrl": EMBEDDED, "hproxyUrl": "http://127.0.0.1:6061/x", "dataSource": "s",
    "dimMap": {"distinct_id": "distinct_id"}, "query": dict({"queryType": "groupBy"}, **query)}, field)
    for query, field in [
        ({"context": [1]}, "query.context"), ({"queryType": "scan", "limit": "2"}, "query.limit"),
        ({"queryType": "scan", "limit": True}, "query.limit"), ({"queryType": "scan", "offset": -1}, "query.offset"),
        ({"limitSpec": "limit 3"}, "query.limitSpec"), ({"limitSpec": {"columns": [5]}}, "query.limitSpec.columns[0]"),
        ({"limitSpec": {"columns": "distinct_id"}}, "query.limitSpec.columns"),
        ({"limitSpec": {"columns": [{"direction": "ascending"}]}}, "query.limitSpec.columns[0]"),
        ({"limitSpec": {"limit": 2.5}}, "query.limitSpec.limit"), ({"dimensions": [{"outputName": "x"}]},
                                                                   "query.dimensions[0]"),
    ]] + [("/ant/tag/usergroup/batchUpdate", {
        "hproxyUrl": "http://127.0.0.1:6061/x", "dataSource": "s", "primaryColumn": "distinct_id",
        "userGroupConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": "g"}, "dimData": {"mi_x": [1]},
        "appendFlags": {"mi_x": "yes"}}, "appendFlags.mi_x.value")])
def test_bad_bodies_answer_400_naming_the_field(sugo_client, sugo_project, database_url, path, body, field):
    before = job_count(database_url, sugo_project[1])
    response = sugo_client.post(path, json=body)
    assert response.status_code == 400, response.get_json()
    assert field in response.get_json()["errors"], response.get_json()
    assert job_count(database_url, sugo_project[1]) == before


def test_append_flag_on_single_value_column_also_named_for_query_updates(sugo_client):
    response = sugo_client.post("/ant/tag/query/batchUpdate", json={
        "brokerUrl": EMBEDDED, "hproxyUrl": "http://127.0.0.1:6061/x", "dataSource": "s",
        "dimMap": {"distinct_id": "distinct_id", "count": "i_count"}, "appendFlags": {"i_count": True, "mi_a": True},
        "query": {"queryType": "groupBy"}})
    assert response.status_code == 400
    assert list(response.get_json()["errors"]) == ["appendFlags.i_count"]


def test_unknown_token_is_401_and_missing_named_project_is_404(service_settings, celery_app, sugo_client):
    response = sugo_client.post("/ant/usergroup/single", json={}, headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    from app import create_app

    settings = replace(service_settings, sugo_project="no-such-project-" + uuid.uuid4().hex[:6])
    client = create_app({"TESTING": True, "SETTINGS": settings, "CELERY": celery_app}).test_client()
    response = client.post("/ant/usergroup/single", json={})
    assert response.status_code == 404 and "COHORTS_SUGO_PROJECT" in response.get_json()["error"]


# -- the embedded broker over HTTP ------------------------------------------------------------------------


def brute_province_counts(written) -> dict[str, int]:
    counts: dict[str, int] = {}
    for part in written["events"]:
        for province in pq.read_table(part, columns=["sugo_province"]).column(0).to_pylist():
            counts[province] = counts.get(province, 0) + 1
    return counts


@pytest.mark.parametrize("path", ["/druid/v2", "/druid/v2/", "/druid/v2?pretty", "/druid/v2/?pretty"])
def test_embedded_broker_answers_group_by_in_druid_shape(sugo_client, sugo_project, path):
    query = {"queryType": "lucene_groupBy", "dataSource": "schedule_desc", "intervals": "1000/3000",
             "granularity": "all", "dimensions": ["sugo_province"],
             "aggregations": [{"type": "lucene_count", "name": "count"}]}
    response = sugo_client.post(path, data=json.dumps(query), content_type="application/json")
    assert response.status_code == 200
    assert ("\n  " in response.get_data(as_text=True)) == ("pretty" in path)
    rows = response.get_json()
    assert all(row["v"] == "v1" for row in rows)
    assert {row["event"]["sugo_province"]: row["event"]["count"] for row in rows} == brute_province_counts(
        sugo_project[3])


def test_embedded_broker_uses_token_project_and_druid_error_bodies(sugo_client, sugo_project):
    headers = {"Authorization": f"Bearer {sugo_project[2]}"}
    users = pq.read_table(sugo_project[3]["users"], columns=["ub_risk"]).column(0).to_pylist()
    response = sugo_client.post("/druid/v2", headers=headers, json={
        "queryType": "timeseries", "dataSource": "tag_bank", "intervals": "1000/3000", "granularity": "all",
        "filter": {"type": "selector", "dimension": "ub_risk", "value": "R4"},
        "aggregations": [{"type": "count", "name": "n"}]})
    assert response.status_code == 200
    assert response.get_json()[0]["result"]["n"] == users.count("R4")
    unsupported = sugo_client.post("/druid/v2", json={"queryType": "dataSourceMetadata", "dataSource": "tag_bank"})
    assert unsupported.status_code == 501
    assert unsupported.get_json()["errorClass"] == "java.lang.UnsupportedOperationException"
    bad = sugo_client.post("/druid/v2", data="{not json", content_type="application/json")
    assert bad.status_code == 400 and bad.get_json()["error"] == "Json parse failed"
    assert sugo_client.delete("/druid/v2/some-query-id").status_code == 202
    assert sugo_client.get("/druid/v2/datasources").get_json() == ["schedule_desc", "tag_bank"]
