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
from tests.services import create_sample_project

REDIS = "127.0.0.1:6379"
EMBEDDED = "http://127.0.0.1:6061/druid/v2?pretty"


class CountingListener:
    """A TCP listener that only counts connections: proof that a refused address was never contacted."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
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
    return name, project_id, token, written


@pytest.fixture
def listener():
    counting = CountingListener()
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


def user_group_query(host_and_ports=REDIS, group="g1"):
    return {"queryType": "user_group", "dataSource": "schedule_desc", "granularity": "all", "intervals": "1000/3000",
            "filter": {"type": "selector", "dimension": "sugo_province", "value": "广东省"},
            "dimension": "distinct_id", "dataConfig": {"hostAndPorts": host_and_ports, "clusterMode": False,
                                                       "groupId": group}}


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
            "hostAndPorts": f"{REDIS},127.0.0.1:{listener.port}", "clusterMode": False, "groupId": "x"}}},
        {"type": "finalGroup", "query": {"dataConfig": {"hostAndPorts": REDIS, "groupId": "out"}}, "append": True},
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


def test_allowed_hosts_setting_admits_an_address(service_settings, celery_app, sugo_project, listener):
    from app.dialects.sugo import allowlist_for

    settings = replace(service_settings, sugo_allowed_hosts=f"127.0.0.1:{listener.port},example.org")
    allow = allowlist_for(settings)
    assert allow("127.0.0.1", listener.port) and allow("example.org", 1234) and allow("127.0.0.1", 6379)
    assert not allow("127.0.0.1", listener.port + 1) and not allow("example.com", 6379)
    assert allow.is_embedded("http://localhost:6061/druid/v2/") and not allow.is_embedded("127.0.0.1:8082")


# -- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, body, field", [
    ("/ant/usergroup/single", {"query": user_group_query()}, "brokerUrl"),
    ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": dict(user_group_query(), queryType="groupBy")},
     "query.queryType"),
    ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": dict(user_group_query(), dataConfig={
        "hostAndPorts": REDIS})}, "query.dataConfig.groupId"),
    ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": dict(user_group_query(), dataConfig={
        "hostAndPorts": "127.0.0.1", "groupId": "g"})}, "query.dataConfig.hostAndPorts"),
    ("/ant/usergroup/single", {"brokerUrl": EMBEDDED, "query": user_group_query(), "append": "maybe"}, "append"),
    ("/ant/usergroup/single", [1], "_body"),
    ("/ant/usergroup/multi", [{"type": "tindex", "brokerUrl": EMBEDDED, "query": user_group_query()},
                              {"type": "usergroup", "query": {"dataConfig": {"hostAndPorts": REDIS, "groupId": "a"}}},
                              {"type": "finalGroup", "query": {"dataConfig": {"hostAndPorts": REDIS,
                                                                              "groupId": "o"}}}], "[1].op"),
    ("/ant/usergroup/multi", [{"type": "tindex", "query": user_group_query()},
                              {"type": "finalGroup", "query": {"dataConfig": {"hostAndPorts": REDIS,
                                                                              "groupId": "o"}}}], "[0].brokerUrl"),
    ("/ant/usergroup/multi", [{"type": "tindex", "brokerUrl": EMBEDDED, "query": user_group_query()}], "_body"),
    ("/ant/usergroup/multi", [{"type": "tindex", "brokerUrl": EMBEDDED, "query": user_group_query()},
                              {"type": "finalGroup", "op": "xor", "query": {"dataConfig": {
                                  "hostAndPorts": REDIS, "groupId": "o"}}}], "[1].op"),
    ("/ant/usergroup/multi", [{"type": "weird", "query": {}}], "[0].type"),
    ("/ant/tag/usergroup/batchUpdate", {
        "hproxyUrl": "http://127.0.0.1:6061/x", "dataSource": "s", "primaryColumn": "distinct_id",
        "userGroupConfig": {"hostAndPorts": REDIS, "groupId": "g"}, "dimData": {"s_test2": "a", "mi_x": "1,2"},
        "appendFlags": {"s_test2": True, "mi_x": True}}, "appendFlags.s_test2"),
    ("/ant/tag/usergroup/batchUpdate", {
        "hproxyUrl": "http://127.0.0.1:6061/x", "dataSource": "s", "primaryColumn": "distinct_id",
        "userGroupConfig": {"hostAndPorts": REDIS, "groupId": "g"}, "dimData": {"s_test2": ["a", "b"]}},
     "dimData.s_test2"),
    ("/ant/tag/usergroup/batchUpdate", {
        "hproxyUrl": "http://127.0.0.1:6061/x", "dataSource": "s", "primaryColumn": "distinct_id",
        "userGroupConfig": {"hostAndPorts": REDIS, "groupId": "g"}, "dimData": {}}, "dimData"),
    ("/ant/tag/query/batchUpdate", {
        "brokerUrl": EMBEDDED, "hproxyUrl": "http://127.0.0.1:6061/x", "dataSource": "s",
        "dimMap": {"count": "i_count"}, "query": {"queryType": "groupBy"}}, "dimMap"),
    ("/ant/tag/query/batchUpdate", {
        "brokerUrl": EMBEDDED, "hproxyUrl": "http://127.0.0.1:6061/x", "dataSource": "s",
        "dimMap": {"distinct_id": "distinct_id"}, "appendFlags": {"i_count": True},
        "query": {"queryType": "timeseries"}}, "query.queryType"),
])
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


def test_unknown_token_is_401_and_missing_default_project_is_404(service_settings, celery_app, sugo_client):
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
    unsupported = sugo_client.post("/druid/v2", json={"queryType": "segmentMetadata", "dataSource": "tag_bank"})
    assert unsupported.status_code == 501
    assert unsupported.get_json()["errorClass"] == "java.lang.UnsupportedOperationException"
    bad = sugo_client.post("/druid/v2", data="{not json", content_type="application/json")
    assert bad.status_code == 400 and bad.get_json()["error"] == "Json parse failed"
    assert sugo_client.delete("/druid/v2/some-query-id").status_code == 202
    assert sugo_client.get("/druid/v2/datasources").get_json() == ["schedule_desc", "tag_bank"]
