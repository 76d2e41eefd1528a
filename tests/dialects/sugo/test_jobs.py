"""Sugo /ant jobs end to end: HTTP -> job row -> real Celery worker -> Redis groups in Sugo's format / hproxy.

Every request of seeds 000 and 001 is sent as the seed writes it, with only brokerUrl, hproxyUrl and
hostAndPorts pointed at local services: the embedded broker (answered in the worker, or over real
HTTP by this app served with werkzeug in a thread), and hproxy = a small real HTTP server in this
file that records every request it gets. Expected groups and tag rows come from a brute force over
the sample Parquet files with plain Python sets, never from the engine. Groups live in a Redis
database the test project is allowed (tests.services.SUGO_REDIS_URL), never the service's own.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest
import redis as redis_lib
from marshmallow import ValidationError
from werkzeug.serving import make_server

from cohort_engine import db
from cohort_engine.project import ProjectEngine
from dialects.sugo import groups as sugo_groups
from tests.redis_topologies import free_port, redis_cluster, redis_sentinel, redis_standalone  # noqa: F401
from tests.services import (
    SUGO_REDIS_URL,
    allow_sugo_targets,
    create_sample_project,
    start_worker,
    stop,
    sugo_redis_target,
    wait_for_worker,
    wait_until,
)
from tests.services import create_token_project as token_project

EMBEDDED = "http://127.0.0.1:6061/druid/v2?pretty"  # an alias of our own broker: answered in the worker
# The Sugo Redis target allowed for the test project: another database than the service's own.
REDIS, SUGO_DB = sugo_redis_target()

SEED_SINGLE = {
    "brokerUrl": "http://192.168.0.225:8082/druid/v2?pretty",
    "query": {
        "queryType": "user_group", "dataSource": "schedule_desc", "granularity": "all", "intervals": "1000/3000",
        "filter": {"type": "selector", "dimension": "sugo_province", "value": "广东省"},
        "dimension": "distinct_id",
        "dataConfig": {"hostAndPorts": "192.168.0.223:6379", "clusterMode": False,
                       "groupId": "schedule_desc_sugo_province"},
        "context": {"timeout": 180000, "useOffheap": True, "groupByStrategy": "v2"}},
    "append": True,
}
SEED_MULTI = [
    {"type": "tindex", "brokerUrl": "http://192.168.0.225:8082/druid/v2?pretty", "query": {
        "queryType": "user_group", "dataSource": "schedule_desc", "granularity": "all", "intervals": "1000/3000",
        "filter": {"type": "selector", "dimension": "sugo_province", "value": "广东省"},
        "dimension": "distinct_id",
        "dataConfig": {"hostAndPorts": "192.168.0.223:6379", "clusterMode": False,
                       "groupId": "schedule_desc_sugo_province"},
        "context": {"timeout": 180000, "useOffheap": True, "groupByStrategy": "v2"}}},
    {"type": "usergroup", "query": {"dataConfig": {
        "hostAndPorts": "192.168.0.220:6379", "clusterMode": False, "sentinelMode": False,
        "groupId": "usergroup_N4pahgU1y"}}, "op": "or"},
    {"type": "uindex", "brokerUrl": "http://192.168.0.223:8082/druid/v2?pretty", "query": {
        "queryType": "user_group", "dataSource": "tag_bank", "granularity": "all", "intervals": "1000/3000",
        "filter": {"type": "selector", "dimension": "ub_risk", "value": "R4"},
        "dimension": "distinct_id",
        "dataConfig": {"hostAndPorts": "192.168.0.223:6379", "clusterMode": False, "groupId": "tag_bank_ub_risk"},
        "context": {"timeout": 180000, "useOffheap": True, "groupByStrategy": "v2"}}, "op": "exclude"},
    {"type": "finalGroup", "query": {"dataConfig": {
        "hostAndPorts": "192.168.0.223:6379", "clusterMode": False, "groupId": "test_usergroup_multi"}},
     "append": True},
]
SEED_TAG_USERGROUP = {
    "hproxyUrl": "http://192.168.0.225:8085/druid/proxy/batchupdate/ssss",
    "dataSource": "ssss", "primaryColumn": "distinct_id",
    "userGroupConfig": {"hostAndPorts": "192.168.0.223:6379", "clusterMode": False,
                        "groupId": "test_usergroup_multi2"},
    "dimData": {"s_test2": "sstt2233", "mi_testmi": "5,9"},
    "appendFlags": {"s_test2": False, "mi_testmi": False},
}
SEED_TAG_QUERY = {
    "brokerUrl": "http://192.168.0.225:8082/druid/v2?pretty",
    "hproxyUrl": "http://192.168.0.225:8085/druid/proxy/batchupdate/ssss",
    "dataSource": "ssss",
    "dimMap": {"distinct_id": "distinct_id", "count": "i_count", "sum_age": "d_sum_age"},
    "appendFlags": {"i_count": False, "l_sum_age": False},
    "query": {
        "queryType": "lucene_groupBy", "dataSource": "schedule_desc", "intervals": "1000/3000", "granularity": "all",
        "context": {"timeout": 180000, "useOffheap": True, "groupByStrategy": "v2"},
        "dimensions": [{"type": "default", "dimension": "distinct_id", "outputName": "distinct_id"}],
        "aggregations": [{"name": "sum_age", "type": "lucene_doubleSum", "fieldName": "age"},
                         {"type": "lucene_count", "name": "count"}],
        "limitSpec": {"type": "default", "columns": [{"dimension": "distinct_id"}], "limit": 3}},
}


# -- a recording hproxy ------------------------------------------------------------------------------


class Hproxy:
    """A real HTTP server answering batch updates as hproxy does, recording (path, rows) of each request.

    `fail_times[n]` answers the n-th request (0-based, counted over the server's life) with HTTP 500;
    `fail_key` answers 500 to every batch holding that primary key; `delay` slows every answer.
    """

    def __init__(self):
        self.requests: list[tuple[str, list]] = []
        self.fail_times: set[int] = set()
        self.fail_key: str | None = None
        self.delay = 0.0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                rows = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    number = len(owner.requests)
                    owner.requests.append((self.path, rows))
                time.sleep(owner.delay)
                keys = {r["values"].get("distinct_id") for r in rows}
                if number in owner.fail_times or (owner.fail_key is not None and owner.fail_key in keys):
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"hproxy: region server busy")
                    return
                body = json.dumps({"success": len(rows), "failed": 0, "errors": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                """Quiet: the test reads what the server records, not its access log."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self):
        with self.lock:
            self.requests.clear()
        self.fail_times, self.fail_key, self.delay = set(), None, 0.0

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(database_url, service_settings, tmp_path_factory):
    """A project with the sample data set ingested; (name, id, token, written files)."""
    name, project_id, token, written = create_sample_project(
        database_url, service_settings.engine, tmp_path_factory.mktemp("sugo"), 2000, 40_000, seed=17, prefix="su")
    return name, project_id, token, written


@pytest.fixture(scope="module")
def brute(sample):
    """Plain Python views of the sample files."""
    events = [pq.read_table(p, columns=["distinct_id", "sugo_province", "age"]).to_pylist()
              for p in sample[3]["events"]]
    events = [row for part in events for row in part]
    users = pq.read_table(sample[3]["users"], columns=["distinct_id", "ub_risk"]).to_pylist()
    return {"events": events, "users": users,
            "guangdong": {e["distinct_id"] for e in events if e["sugo_province"] == "广东省"},
            "r4": {u["distinct_id"] for u in users if u["ub_risk"] == "R4"},
            "all": sorted({e["distinct_id"] for e in events} | {u["distinct_id"] for u in users})}


@pytest.fixture(scope="module")
def hproxy():
    server = Hproxy()
    yield server
    server.close()


@pytest.fixture(scope="module")
def ports():
    return {"broker": free_port(), "dead": free_port(), "slow": free_port()}


@pytest.fixture(scope="module")
def sugo_settings(service_settings, database_url, sample, hproxy, ports, redis_cluster, redis_sentinel):  # noqa: F811
    """The sample project's Sugo targets (as `core.manage sugo-allow` sets them) and settings naming it."""
    allow_sugo_targets(
        database_url, sample[1], hproxy=[f"127.0.0.1:{hproxy.port}"],
        broker=[f"127.0.0.1:{p}" for p in (ports["broker"], ports["dead"], ports["slow"])],
        redis=[f"{REDIS}/{SUGO_DB}", f"{redis_sentinel.host_and_ports}/0", f"{redis_sentinel.master.address}/0"]
        + [f"{n.address}/0" for n in redis_cluster.nodes])
    return replace(service_settings, queue="sugo-" + uuid.uuid4().hex[:8], sugo_project=sample[0],
                   sugo_embedded_brokers="127.0.0.1:6061", sugo_hproxy_backoff=0.01, sugo_wait_seconds=30.0)


@pytest.fixture(scope="module")
def sugo_celery(sugo_settings):
    from workers.celery_app import create_celery

    return create_celery(sugo_settings)


@pytest.fixture(scope="module")
def sugo_app(sugo_settings, sugo_celery):
    from app import create_app

    return create_app({"TESTING": True, "SETTINGS": sugo_settings, "CELERY": sugo_celery})


@pytest.fixture(scope="module")
def http_broker(sugo_app, ports):
    """This app served over real HTTP on a loopback port, so the worker reaches /druid/v2 as a remote broker."""
    server = make_server("127.0.0.1", ports["broker"], sugo_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{ports['broker']}/druid/v2?pretty"
    server.shutdown()


@pytest.fixture(scope="module")
def sugo_worker(service_env, sugo_settings, sugo_celery, tmp_path_factory):
    env = {"COHORTS_QUEUE": sugo_settings.queue, "COHORTS_SUGO_PROJECT": sugo_settings.sugo_project,
           "COHORTS_SUGO_EMBEDDED_BROKERS": sugo_settings.sugo_embedded_brokers, "COHORTS_SUGO_HPROXY_BACKOFF": "0.01"}
    log = tmp_path_factory.mktemp("sugo-logs") / "worker-sugo.log"
    process = start_worker(service_env, "sugo", log, extra_env=env)
    try:
        wait_for_worker(sugo_celery, "sugo")
        yield process
    finally:
        stop(process)


@pytest.fixture
def client(sugo_app, sugo_worker, hproxy):
    hproxy.reset()
    return sugo_app.test_client()


@pytest.fixture
def groups():
    """The Sugo target database (REDIS, db SUGO_DB), where the tests' groups live."""
    connection = redis_lib.Redis.from_url(SUGO_REDIS_URL)
    yield connection
    connection.close()


def local(body, broker=EMBEDDED, redis=REDIS, hproxy_url=None):
    """A seed body with only its addresses replaced."""
    body = copy.deepcopy(body)
    for item in body if isinstance(body, list) else [body]:
        if "brokerUrl" in item:
            item["brokerUrl"] = broker
        if "hproxyUrl" in item:
            item["hproxyUrl"] = hproxy_url
        for config in (item.get("query", {}).get("dataConfig"), item.get("userGroupConfig")):
            if config is not None:
                config["hostAndPorts"] = redis
                if redis == REDIS:
                    config["db"] = SUGO_DB
    return body


def read(groups, key) -> list[str]:
    return sugo_groups.read_group(groups, key)


def row_count(response) -> int:
    body = response.get_json()
    assert response.status_code == 200, body
    assert list(body[0]) == ["event"] and list(body[0]["event"]) == ["RowCount"]
    return body[0]["event"]["RowCount"]


# -- seed 001: user groups ------------------------------------------------------------------------------


def test_seed_single_appends_to_the_group(client, groups, brute):
    old = ["old-外部-1", "old-2", sorted(brute["guangdong"])[0]]
    sugo_groups.write_group(groups, "schedule_desc_sugo_province", old)
    count = row_count(client.post("/ant/usergroup/single", json=local(SEED_SINGLE)))
    expected = brute["guangdong"] | set(old)
    assert count == len(expected)
    stored = read(groups, "schedule_desc_sugo_province")
    assert len(stored) == len(set(stored)) and set(stored) == expected


def test_seed_single_through_a_remote_http_broker_overwrites(client, groups, brute, http_broker):
    sugo_groups.write_group(groups, "schedule_desc_sugo_province", ["stale-1", "stale-2"])
    body = dict(local(SEED_SINGLE, broker=http_broker), append=False)
    assert row_count(client.post("/ant/usergroup/single", json=body)) == len(brute["guangdong"])
    assert set(read(groups, "schedule_desc_sugo_province")) == brute["guangdong"]


def test_seed_multi(client, groups, brute):
    kept = brute["all"][:300:3] + ["外部-only-1", "外部-only-2"]
    existing = ["previous-1", brute["all"][5]]
    sugo_groups.write_group(groups, "usergroup_N4pahgU1y", kept)
    sugo_groups.write_group(groups, "test_usergroup_multi", existing)
    # Whatever the temporary keys held is gone afterwards, as with Sugo's service.
    sugo_groups.write_group(groups, "tag_bank_ub_risk", ["junk"])
    count = row_count(client.post("/ant/usergroup/multi", json=local(SEED_MULTI)))
    expected = ((brute["guangdong"] | set(kept)) - brute["r4"]) | set(existing)
    assert count == len(expected)
    assert set(read(groups, "test_usergroup_multi")) == expected
    assert read(groups, "usergroup_N4pahgU1y") == kept
    assert not groups.exists("schedule_desc_sugo_province") and not groups.exists("tag_bank_ub_risk")


@pytest.mark.parametrize("ops, append", [(["or", "and", "exclude"], False), (["exclude", "or", "and"], True),
                                         (["and", "and", "or"], True)])
def test_multi_set_algebra_matches_python_sets(client, groups, brute, ops, append):
    tag = uuid.uuid4().hex[:6]
    universe = brute["all"][:400] + [f"外部{i}" for i in range(40)]
    sets = [set(universe[i::k]) for i, k in ((0, 2), (1, 3), (0, 5), (2, 7))]
    names = [f"{tag}-src{i}" for i in range(4)]
    for name, members in zip(names, sets, strict=True):
        sugo_groups.write_group(groups, name, sorted(members))
    before = set(universe[::11])
    sugo_groups.write_group(groups, f"{tag}-out", sorted(before))
    body = [{"type": "usergroup", "query": {"dataConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": names[0]}}}]
    body += [{"type": "usergroup", "op": op, "query": {"dataConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": name}}}
             for op, name in zip(ops, names[1:], strict=True)]
    body.append({"type": "finalGroup", "append": append,
                 "query": {"dataConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": f"{tag}-out"}}})
    expected = set(sets[0])
    for op, members in zip(ops, sets[1:], strict=True):
        expected = expected | members if op == "or" else expected & members if op == "and" else expected - members
    if append:
        expected |= before
    assert row_count(client.post("/ant/usergroup/multi", json=body)) == len(expected)
    assert set(read(groups, f"{tag}-out")) == expected
    assert all(set(read(groups, n)) == s for n, s in zip(names, sets, strict=True))


def stored(name: str) -> dict:
    return {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": name}


def multi_body(sources: list[tuple[str | None, dict]], output: str, append: bool = False) -> list[dict]:
    """A multi request: (op, entry) per source, the first op None, then the finalGroup."""
    body = [dict(entry, op=op) if op else entry for op, entry in sources]
    return body + [{"type": "finalGroup", "append": append, "query": {"dataConfig": stored(output)}}]


def usergroup(name: str) -> dict:
    return {"type": "usergroup", "query": {"dataConfig": stored(name)}}


@pytest.mark.parametrize("ops", [["or", "exclude", "and", "or"], ["exclude", "or", "or", "and"],
                                 ["and", "exclude", "or", "exclude"]])
def test_multi_of_stored_groups_only_edge_cases_match_python_sets(client, groups, sugo_settings, sample, ops):
    """Duplicates as Sugo may store them, an empty group, a missing key; none of the ids reach the dictionary."""
    tag = uuid.uuid4().hex[:6]
    members = {
        f"{tag}-dups": [f"{tag}-新{i % 7}" for i in range(40)],
        f"{tag}-empty": [],
        f"{tag}-big": [f"{tag}-新{i}" for i in range(0, 30, 2)] + [f"{tag}-x{i}" for i in range(20)],
        f"{tag}-missing": None,
        f"{tag}-small": [f"{tag}-新{i}" for i in range(3, 9)] + [f"{tag}-x3"],
    }
    for name, ids in members.items():
        if ids is not None:
            # The Java layout, duplicates and all (write_group would drop them).
            groups.rpush(name, (f"{len(ids)}\t" + "".join(f"{i}\t" for i in ids)).encode())
    names = list(members)
    output = f"{tag}-out"
    sugo_groups.write_group(groups, output, [f"{tag}-old"])
    body = multi_body([(None, usergroup(names[0]))] + [(op, usergroup(n)) for op, n in zip(ops, names[1:], strict=True)],
                      output, append=ops[0] == "or")
    expected = set(members[names[0]])
    for op, name in zip(ops, names[1:], strict=True):
        current = set(members[name] or [])
        expected = expected | current if op == "or" else expected & current if op == "and" else expected - current
    if ops[0] == "or":
        expected.add(f"{tag}-old")
    assert row_count(client.post("/ant/usergroup/multi", json=body)) == len(expected)
    written = read(groups, output)
    assert len(written) == len(set(written)) and set(written) == expected
    assert not groups.exists(f"{tag}-missing")
    engine = ProjectEngine(sugo_settings.engine, sample[0])
    assert all(engine.lookup(key) is None for ids in members.values() for key in ids or [])


def test_multi_with_a_query_still_maps_group_ids_through_the_dictionary(client, groups, brute, sugo_settings, sample):
    """A tindex source is a uid bitmap, so the stored group's ids meet it over the project dictionary."""
    tag = uuid.uuid4().hex[:6]
    outside = [f"{tag}-外部{i}" for i in range(5)]
    kept = outside + brute["all"][:200:4]
    sugo_groups.write_group(groups, f"{tag}-kept", kept)
    query = dict(SEED_MULTI[0]["query"], dataConfig=stored(f"{tag}-tmp"))
    body = multi_body([(None, usergroup(f"{tag}-kept")), ("or", {"type": "tindex", "brokerUrl": EMBEDDED, "query": query})],
                      f"{tag}-out")
    expected = set(kept) | brute["guangdong"]
    assert row_count(client.post("/ant/usergroup/multi", json=body)) == len(expected)
    assert set(read(groups, f"{tag}-out")) == expected
    engine = ProjectEngine(sugo_settings.engine, sample[0])
    assert all(engine.lookup(key) is not None for key in outside)


def test_multi_across_sentinel_and_cluster(client, groups, brute, redis_sentinel, redis_cluster):  # noqa: F811
    tag = uuid.uuid4().hex[:6]
    sentinel_config = {"hostAndPorts": redis_sentinel.host_and_ports, "sentinelMode": True,
                       "masterName": redis_sentinel.master_name, "password": redis_sentinel.password}
    master = redis_sentinel.master.client()
    members = set(brute["all"][:500:2])
    sugo_groups.write_group(master, f"{tag}-kept", sorted(members))
    master.close()
    cluster_config = {"hostAndPorts": redis_cluster.host_and_ports, "clusterMode": True, "groupId": f"{tag}-final"}
    body = [{"type": "usergroup", "query": {"dataConfig": dict(sentinel_config, groupId=f"{tag}-kept")}},
            {"type": "tindex", "op": "and", "brokerUrl": EMBEDDED,
             "query": dict(SEED_MULTI[0]["query"], dataConfig=dict(sentinel_config, groupId=f"{tag}-tmp"))},
            {"type": "finalGroup", "query": {"dataConfig": cluster_config}}]
    expected = members & brute["guangdong"]
    assert row_count(client.post("/ant/usergroup/multi", json=body)) == len(expected)
    cluster = redis_lib.RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    try:
        assert set(sugo_groups.read_group(cluster, f"{tag}-final")) == expected
    finally:
        cluster.close()


def test_failure_midway_keeps_the_previous_group(client, groups, brute):
    tag = uuid.uuid4().hex[:6]
    previous = ["keep-1", "keep-2", brute["all"][0]]
    sugo_groups.write_group(groups, f"{tag}-out", previous)
    sugo_groups.write_group(groups, f"{tag}-a", brute["all"][:50])
    bad_query = copy.deepcopy(SEED_MULTI[0]["query"])
    bad_query["dataConfig"].update(hostAndPorts=REDIS, db=SUGO_DB)
    bad_query["filter"] = {"type": "selectr", "dimension": "sugo_province", "value": "x"}  # Druid answers 400
    body = [{"type": "usergroup", "query": {"dataConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": f"{tag}-a"}}},
            {"type": "tindex", "op": "or", "brokerUrl": EMBEDDED, "query": bad_query},
            {"type": "finalGroup", "query": {"dataConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": f"{tag}-out"}}}]
    response = client.post("/ant/usergroup/multi", json=body)
    assert response.status_code == 400
    error = response.get_json()
    assert error["error"] == "bad_query" and "Json parse failed" in error["errorMessage"]
    assert "filter" in error["errorMessage"] and isinstance(error["jobId"], int)
    assert read(groups, f"{tag}-out") == previous
    groups.set(f"{tag}-notalist", "x")
    body[1] = {"type": "usergroup", "op": "or", "query": {"dataConfig": {"hostAndPorts": REDIS, "db": SUGO_DB,
                                                                          "groupId": f"{tag}-notalist"}}}
    response = client.post("/ant/usergroup/multi", json=body)
    assert response.status_code == 400 and response.get_json()["error"] == "bad_group"
    assert read(groups, f"{tag}-out") == previous
    # A list whose count is wrong: refused naming its key, on the stored-groups-only path too.
    groups.rpush(f"{tag}-miscounted", b"2\tonly-one\t")
    body[1]["query"]["dataConfig"]["groupId"] = f"{tag}-miscounted"
    response = client.post("/ant/usergroup/multi", json=body)
    error = response.get_json()
    assert response.status_code == 400 and error["error"] == "bad_group"
    assert f"Redis key '{tag}-miscounted': user group says it holds 2 ids but holds 1" in error["errorMessage"]
    assert read(groups, f"{tag}-out") == previous


# -- holes closed: concurrent appends, cluster/sentinel addresses, shapes that crashed the worker ---------


def finished_job(client, job_id: int, timeout: float = 60.0) -> dict:
    def check():
        polled = client.get(f"/ant/jobs/{job_id}").get_json()
        return polled if polled["answer"] is not None else None
    return wait_until(check, timeout=timeout, what=f"job {job_id} to end")


def test_concurrent_appends_to_one_group_keep_both_jobs_ids(client, groups, brute):
    """Two append jobs run at once (the worker has 2 processes); an unlocked read-union-write keeps one."""
    tag = uuid.uuid4().hex[:6]
    # A big existing group, so each job's read-union-write takes long enough to overlap the other's.
    existing = [f"{tag}-old-{i}" for i in range(100_000)]
    sugo_groups.write_group(groups, f"{tag}-race", existing)
    guangdong = local(SEED_SINGLE)
    guangdong["query"]["dataConfig"]["groupId"] = f"{tag}-race"
    r4 = copy.deepcopy(guangdong)
    r4["query"].update(dataSource="tag_bank", filter={"type": "selector", "dimension": "ub_risk", "value": "R4"})
    job_ids = [client.post("/ant/usergroup/single?async=true", json=body).get_json()["jobId"]
               for body in (guangdong, r4)]
    for job_id in job_ids:
        assert finished_job(client, job_id)["status"] == 200
    stored = read(groups, f"{tag}-race")
    assert len(stored) == len(set(stored))
    assert set(stored) == set(existing) | brute["guangdong"] | brute["r4"]


def test_append_takes_sugos_string_spelling_of_true(client, groups, brute):
    tag = uuid.uuid4().hex[:6]
    sugo_groups.write_group(groups, f"{tag}-g", ["before"])
    body = local(SEED_SINGLE)
    body["append"] = "true"
    body["query"]["dataConfig"]["groupId"] = f"{tag}-g"
    assert row_count(client.post("/ant/usergroup/single", json=body)) == len(brute["guangdong"]) + 1


@pytest.mark.parametrize("mode", ["clusterMode", "sentinelMode"])
def test_cluster_or_sentinel_mode_against_a_standalone_redis_is_a_bad_request(client, sample, database_url,
                                                                              redis_standalone, mode):  # noqa: F811
    allow_sugo_targets(database_url, sample[1], redis=[f"{redis_standalone.address}/0"])
    body = local(SEED_SINGLE, redis=redis_standalone.address)
    body["query"]["dataConfig"][mode] = True
    response = client.post("/ant/usergroup/single", json=body)
    assert response.status_code == 400, response.get_json()
    answer = response.get_json()
    assert answer["error"] == "bad_request" and mode in answer["errorMessage"]


def test_a_cluster_node_the_project_may_not_use_is_never_connected(client, database_url, redis_cluster):  # noqa: F811
    """The project may use one cluster node; the nodes CLUSTER SLOTS or a MOVED names are refused."""
    allowed, *others = redis_cluster.nodes
    name, project_id, token = token_project(database_url, "cl")
    allow_sugo_targets(database_url, project_id, redis=[f"{allowed.address}/0", f"{REDIS}/{SUGO_DB}"])
    tag = uuid.uuid4().hex[:6]
    # A group id whose slot is served by another node than the allowed one.
    node_of = {n.port: n for n in redis_cluster.nodes}
    probe = redis_lib.RedisCluster(host="127.0.0.1", port=allowed.port)
    try:
        group = next(f"{tag}-{i}" for i in range(1000)
                     if probe.get_node_from_key(f"{tag}-{i}").port != allowed.port)
        other = node_of[probe.get_node_from_key(group).port]
        before = {n.port: n.client().info("stats")["total_connections_received"] for n in others}
        sugo_groups.write_group(redis_lib.Redis.from_url(SUGO_REDIS_URL), f"{tag}-src", ["a", "b"])
        body = [{"type": "usergroup", "query": {"dataConfig": {"hostAndPorts": REDIS, "db": SUGO_DB,
                                                               "groupId": f"{tag}-src"}}},
                {"type": "finalGroup", "query": {"dataConfig": {"hostAndPorts": allowed.address,
                                                                "clusterMode": True, "groupId": group}}}]
        response = client.post("/ant/usergroup/multi", json=body, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 400, response.get_json()
        answer = response.get_json()
        assert answer["error"] == "bad_request"
        assert f"127.0.0.1:{other.port} (reported by the Redis Cluster" in answer["errorMessage"]
        # Counted by the refused nodes themselves: no connection from the job.
        after = {n.port: n.client().info("stats")["total_connections_received"] for n in others}
        assert all(after[p] - before[p] == 1 for p in before)  # the one is this test's own info() client
        assert not probe.exists(group)
    finally:
        probe.close()


def test_a_sentinels_master_the_project_may_not_use_is_refused(client, database_url, redis_sentinel):  # noqa: F811
    name, project_id, token = token_project(database_url, "se")
    allow_sugo_targets(database_url, project_id, redis=[f"{redis_sentinel.host_and_ports}/0", f"{REDIS}/{SUGO_DB}"])
    tag = uuid.uuid4().hex[:6]
    sugo_groups.write_group(redis_lib.Redis.from_url(SUGO_REDIS_URL), f"{tag}-src", ["a"])
    body = [{"type": "usergroup", "query": {"dataConfig": {"hostAndPorts": REDIS, "db": SUGO_DB,
                                                           "groupId": f"{tag}-src"}}},
            {"type": "finalGroup", "query": {"dataConfig": {
                "hostAndPorts": redis_sentinel.host_and_ports, "sentinelMode": True, "groupId": f"{tag}-out",
                "masterName": redis_sentinel.master_name, "password": redis_sentinel.password}}}]
    response = client.post("/ant/usergroup/multi", json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 400, response.get_json()
    assert f"{redis_sentinel.master.address} (reported by" in response.get_json()["errorMessage"]
    master = redis_sentinel.master.client()
    try:
        assert not master.exists(f"{tag}-out")
    finally:
        master.close()


MUTATION_VALUES = [None, 5, -1, 1.5, "x", "2", "", "yes", [], [1], {}, {"a": 1}, True]


def _paths(value, prefix=()):
    yield prefix
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _paths(child, prefix + (key,))


def _mutated(body, path, value):
    body = copy.deepcopy(body)
    holder = body
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return body


def test_accepted_mutations_of_the_seed_bodies_never_crash_the_worker_code(sugo_settings, sample, hproxy,
                                                                            database_url):
    """Each seed body with one value replaced (seeded sample): refused at submit, or ends with a mapped code.

    Runs the job code (SugoRunner) in this process, so the sample stays large and fast; what it
    proves is that no accepted body raises anything but JobStopped (an unexpected exception is the
    worker's `internal_error`, answered 500).
    """
    import random

    from core.data import sugo_targets
    from core.jobs.runner import JobStopped
    from dialects.sugo import schemas as dialect
    from dialects.sugo.jobs import SugoRunner

    hproxy_url = f"http://127.0.0.1:{hproxy.port}/druid/proxy/batchupdate/ssss"
    seeds = {"single": local(SEED_SINGLE), "multi": local(SEED_MULTI),
             "tag_user_group": local(SEED_TAG_USERGROUP, hproxy_url=hproxy_url),
             "tag_query": local(SEED_TAG_QUERY, hproxy_url=hproxy_url)}
    cases = [(endpoint, path, value) for endpoint, seed in seeds.items() for path in _paths(seed)
             if path and path[-1] not in ("hostAndPorts", "brokerUrl", "hproxyUrl") for value in MUTATION_VALUES]
    with db.connection(database_url) as conn:
        targets = dialect.targets_for(sugo_settings, sugo_targets.for_project(conn, sample[1]))
    codes = set(dialect.FAILURE_STATUS)
    ran = 0
    for endpoint, path, value in random.Random(8).sample(cases, 200):
        try:
            data = _load(endpoint, _mutated(seeds[endpoint], path, value))
            dialect.check_hosts(endpoint, data, targets)
        except ValidationError:
            continue
        ran += 1
        try:
            SugoRunner(sugo_settings, sample[0], targets).run(endpoint, json.loads(json.dumps(data)))
        except JobStopped as stop:
            assert stop.code in codes, (endpoint, path, value, stop.code, stop.message)
    assert ran > 50  # most mutations are of values the broker or hproxy receive as sent


def _load(endpoint, body):
    from dialects.sugo import schemas as dialect

    return {"single": dialect.load_single, "multi": dialect.load_multi, "tag_user_group": dialect.load_tag_user_group,
            "tag_query": dialect.load_tag_query}[endpoint](body)


# -- the README's Sugo examples, as written, against the bundled hproxy stand-in ------------------------


@pytest.fixture
def hproxy_standin(tmp_path):
    """scripts/hproxy_standin.py as `make run` starts it, on a free port: the URL of its batch-update root."""
    import subprocess
    import sys

    from tests.services import ROOT

    port = free_port()
    log = open(tmp_path / "hproxy-standin.log", "wb")
    process = subprocess.Popen([sys.executable, "scripts/hproxy_standin.py", "--port", str(port)], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: _answers(port), timeout=30, what="hproxy stand-in")
        yield port
    finally:
        stop(process)
        log.close()


def _answers(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def readme_sugo_calls() -> list[tuple[str, str]]:
    """(path, body text) of every curl in the README's Sugo section, in order."""
    import re

    from tests.services import ROOT

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Sugo", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"curl -s -X POST '?localhost:6061(\S+?)'? -H 'Content-Type: application/json' -d '(.*?)'\n",
                      section, flags=re.S)


def test_readme_sugo_examples_work_as_written(client, groups, brute, sample, database_url, hproxy_standin):
    """Only the demo's addresses differ: the Sugo db (README: 2) and the stand-in's port (README: 8085)."""
    import requests

    calls = readme_sugo_calls()
    assert [path for path, _ in calls] == ["/ant/usergroup/single", "/ant/usergroup/multi",
                                           "/ant/tag/usergroup/batchUpdate", "/ant/tag/query/batchUpdate",
                                           "/druid/v2?pretty"]
    allow_sugo_targets(database_url, sample[1], hproxy=[f"127.0.0.1:{hproxy_standin}"])
    groups.delete("gd", "gd_not_r4")
    answers = []
    for path, body in calls:
        body = body.replace('"db": 2', f'"db": {SUGO_DB}').replace("127.0.0.1:8085", f"127.0.0.1:{hproxy_standin}")
        body = body.replace('"127.0.0.1:6379"', json.dumps(REDIS))
        response = client.post(path, data=body.encode("utf-8"), content_type="application/json")
        assert response.status_code == 200, (path, response.get_json())
        answers.append(response.get_json())
    gd_not_r4 = brute["guangdong"] - brute["r4"]
    assert answers[0] == [{"event": {"RowCount": len(brute["guangdong"])}}]
    assert answers[1] == [{"event": {"RowCount": len(gd_not_r4)}}]
    assert set(read(groups, "gd_not_r4")) == gd_not_r4
    assert answers[2] == {"success": len(gd_not_r4), "failed": 0, "errors": []}
    assert answers[3] == {"success": 3, "failed": 0, "errors": []}
    assert len(answers[4]) == 1 and len(answers[4][0]["result"]) == 3
    received = requests.get(f"http://127.0.0.1:{hproxy_standin}/druid/proxy/batchupdate/ssss", timeout=10).json()
    assert received["received"] == len(gd_not_r4) + 3


def test_remote_broker_error_answers_its_code(client, http_broker):
    body = local(SEED_SINGLE, broker=http_broker)
    body["query"]["filter"] = {"type": "javascript", "dimension": "sugo_province", "function": "x"}
    response = client.post("/ant/usergroup/single", json=body)
    assert response.status_code == 501
    assert response.get_json()["error"] == "unsupported"
    assert "Unsupported operation" in response.get_json()["errorMessage"]


# -- seed 000: tag batch updates ----------------------------------------------------------------------------


def test_seed_tag_usergroup_batch_update(client, groups, hproxy, brute):
    ids = brute["all"][10:15]
    sugo_groups.write_group(groups, "test_usergroup_multi2", ids)
    body = local(SEED_TAG_USERGROUP, hproxy_url=f"http://127.0.0.1:{hproxy.port}/druid/proxy/batchupdate/ssss")
    response = client.post("/ant/tag/usergroup/batchUpdate", json=body)
    assert response.status_code == 200
    assert response.get_json() == {"success": 5, "failed": 0, "errors": []}
    assert [path for path, _ in hproxy.requests] == ["/druid/proxy/batchupdate/ssss"]
    assert hproxy.requests[0][1] == [
        {"values": {"s_test2": "sstt2233", "mi_testmi": "5,9", "distinct_id": key},
         "appendFlags": {"s_test2": False, "mi_testmi": False}} for key in ids]


def test_seed_tag_query_batch_update(client, hproxy, brute):
    body = local(SEED_TAG_QUERY, hproxy_url=f"http://127.0.0.1:{hproxy.port}/druid/proxy/batchupdate/ssss")
    response = client.post("/ant/tag/query/batchUpdate", json=body)
    assert response.status_code == 200
    assert response.get_json() == {"success": 3, "failed": 0, "errors": []}
    first = sorted({e["distinct_id"] for e in brute["events"]}, key=lambda k: k.encode())[:3]
    expected = [{"values": {"distinct_id": key,
                            "i_count": sum(1 for e in brute["events"] if e["distinct_id"] == key),
                            "d_sum_age": float(sum(e["age"] for e in brute["events"] if e["distinct_id"] == key))},
                 "appendFlags": {"i_count": False}} for key in first]
    assert [rows for _, rows in hproxy.requests] == [expected]


def test_tag_query_over_broker_list_pages_and_batches(client, hproxy, brute, http_broker, ports):
    body = local(SEED_TAG_QUERY)
    del body["brokerUrl"], body["hproxyUrl"]
    body["broker"] = f"127.0.0.1:{ports['dead']},127.0.0.1:{ports['broker']}"  # the first host refuses
    body["hproxy"] = f"127.0.0.1:{hproxy.port}"
    body["query"]["limitSpec"]["limit"] = 1500
    response = client.post("/ant/tag/query/batchUpdate", json=body)
    assert response.get_json() == {"success": 1500, "failed": 0, "errors": []}
    assert [len(rows) for _, rows in hproxy.requests] == [1000, 500]
    assert {path for path, _ in hproxy.requests} == {"/druid/proxy/batchupdate/ssss"}
    sent = [row["values"]["distinct_id"] for _, rows in hproxy.requests for row in rows]
    assert sent == sorted({e["distinct_id"] for e in brute["events"]}, key=lambda k: k.encode())[:1500]


def test_batches_of_1000_multi_values_joined_and_a_failing_batch_retried(client, groups, hproxy, brute):
    ids = [f"user-{i:05d}" for i in range(2500)]
    sugo_groups.write_group(groups, "batch-group", ids)
    hproxy.fail_times = {1}  # the second request fails once and is retried
    body = {"hproxy": f"127.0.0.1:{hproxy.port}", "dataSource": "tags", "primaryColumn": "distinct_id",
            "userGroupConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": "batch-group"},
            "dimData": {"mi_levels": [3, 5, 8], "s_name": "x", "md_days": ["2024-01-01", "2024-01-02"]},
            "appendFlags": {"mi_levels": True, "s_name": False}}
    response = client.post("/ant/tag/usergroup/batchUpdate", json=body)
    assert response.get_json() == {"success": 2500, "failed": 0, "errors": []}
    sizes = [len(rows) for _, rows in hproxy.requests]
    assert sizes == [1000, 1000, 1000, 500]  # the retry resends the second batch whole
    assert hproxy.requests[1][1] == hproxy.requests[2][1]
    first = hproxy.requests[0][1][0]
    assert first == {"values": {"mi_levels": "3,5,8", "s_name": "x", "md_days": "2024-01-01,2024-01-02",
                                "distinct_id": "user-00000"}, "appendFlags": {"mi_levels": True, "s_name": False}}
    assert [r["values"]["distinct_id"] for _, rows in hproxy.requests[:2] + hproxy.requests[3:] for r in rows] == ids


def test_a_batch_that_keeps_failing_is_reported(client, groups, hproxy):
    ids = [f"user-{i:05d}" for i in range(2500)]
    sugo_groups.write_group(groups, "batch-group", ids)
    hproxy.fail_key = "user-01500"
    body = {"hproxy": f"127.0.0.1:{hproxy.port}", "dataSource": "tags", "primaryColumn": "distinct_id",
            "userGroupConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": "batch-group"}, "dimData": {"s_name": "x"}}
    response = client.post("/ant/tag/usergroup/batchUpdate", json=body)
    answer = response.get_json()
    assert response.status_code == 200
    assert answer["success"] == 1500 and answer["failed"] == 1000 and len(answer["errors"]) == 1
    error = answer["errors"][0]
    assert error["batch"] == 1 and error["written"] == 0 and error["notWritten"] == 1000
    assert (error["firstKey"], error["lastKey"]) == ("user-01000", "user-01999")
    assert "HTTP 500" in error["error"] and "4 attempts" in error["error"]
    assert [len(rows) for _, rows in hproxy.requests] == [1000] + [1000] * 4 + [500]


# -- waiting, 202 and progress ---------------------------------------------------------------------------------


def test_async_answers_202_then_the_job_reports_progress_and_result(client, groups, hproxy, sample):
    ids = [f"slow-{i}" for i in range(3000)]
    sugo_groups.write_group(groups, "slow-group", ids)
    hproxy.delay = 0.3
    body = {"hproxyUrl": f"http://127.0.0.1:{hproxy.port}/druid/proxy/batchupdate/t", "dataSource": "t",
            "primaryColumn": "distinct_id", "userGroupConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": "slow-group"},
            "dimData": {"s_a": "1"}}
    response = client.post("/ant/tag/usergroup/batchUpdate?async=true", json=body)
    assert response.status_code == 202
    job_id = response.get_json()["jobId"]
    assert response.headers["Location"] == f"/api/v1/jobs/{job_id}"
    headers = {"Authorization": f"Bearer {sample[2]}"}
    seen = []

    def finished():
        job = client.get(response.headers["Location"], headers=headers).get_json()
        seen.append(job["progress"])
        return job if job["status"] in ("succeed", "failed") else None

    job = wait_until(finished, timeout=30, interval=0.05, what="slow batch update")
    assert job["status"] == "succeed" and job["kind"] == "batchUpdate" and job["cohort_id"] is None
    assert job["result"]["success"] == 3000
    assert seen == sorted(seen) and len(set(seen)) >= 3 and seen[-1] == 100
    polled = client.get(f"/ant/jobs/{job_id}").get_json()
    assert polled["answer"] == {"success": 3000, "failed": 0, "errors": []} and polled["status"] == 200


def test_past_the_wait_limit_the_answer_is_202(sugo_settings, sugo_celery, sugo_worker, groups, hproxy, sample):
    from app import create_app

    hproxy.reset()
    hproxy.delay = 1.0
    sugo_groups.write_group(groups, "one-id", ["only"])
    app = create_app({"TESTING": True, "SETTINGS": replace(sugo_settings, sugo_wait_seconds=0.3),
                      "CELERY": sugo_celery})
    body = {"hproxyUrl": f"http://127.0.0.1:{hproxy.port}/x", "dataSource": "t", "primaryColumn": "distinct_id",
            "userGroupConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": "one-id"}, "dimData": {"s_a": "1"}}
    client = app.test_client()
    response = client.post("/ant/tag/usergroup/batchUpdate", json=body)
    assert response.status_code == 202  # hproxy takes a second, the request waits 0.3 s
    job_id = response.get_json()["jobId"]
    done = wait_until(lambda: client.get(f"/ant/jobs/{job_id}").get_json()["answer"], timeout=30,
                      what="job to end")
    assert done == {"success": 1, "failed": 0, "errors": []}


def test_a_job_left_new_is_resent_to_its_sugo_task(client, groups, brute, sample, sugo_celery, database_url):
    """What the sweeper does for a job whose first enqueue was lost: enqueue by id picks the task by kind."""
    from core.data import jobs
    from core.queue import enqueue
    from tests.tasks.conftest import ended

    sugo_groups.write_group(groups, "resent-src", brute["all"][:20])
    request = {"brokerUrl": EMBEDDED, "append": False, "query": {
        "queryType": "user_group", "dataSource": "tag_bank", "intervals": "1000/3000", "dimension": "distinct_id",
        "filter": {"type": "selector", "dimension": "ub_risk", "value": "R4"},
        "dataConfig": {"hostAndPorts": REDIS, "db": SUGO_DB, "groupId": "resent-out"}}}
    with db.connection(database_url) as conn:
        job, _ = jobs.insert(conn, sample[1], "usergroup", params={"endpoint": "single", "request": request})
    assert enqueue(sugo_celery, lambda: db.connection(database_url), [job]) == []

    def finished():
        state = client.get(f"/ant/jobs/{job['id']}").get_json()["job"]
        return state if ended(state) else None

    done = wait_until(finished, timeout=30, what="resent job")
    assert done["status"] == "succeed" and done["result"]["count"] == len(brute["r4"])
    assert set(read(groups, "resent-out")) == brute["r4"]


class SlowBroker:
    """A real HTTP "broker" whose queries hang until DELETE /druid/v2/{queryId} cancels them (Druid then answers 500)."""

    def __init__(self, port: int):
        self.query_ids: list[str] = []
        self.deleted: list[str] = []
        self.cancelled = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.query_ids.append(query["context"]["queryId"])
                owner.cancelled.wait(30)
                self._answer(500, {"error": "Query cancelled", "errorMessage": "cancelled by request",
                                   "errorClass": "org.apache.druid.query.QueryInterruptedException", "host": None})

            def do_DELETE(self):
                owner.deleted.append(self.path.rsplit("/", 1)[-1])
                owner.cancelled.set()
                self._answer(202, {})

            def _answer(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                """Quiet: the test reads what the server records, not its access log."""

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.cancelled.set()
        self.server.shutdown()
        self.server.server_close()


def test_cancelling_the_job_cancels_its_broker_query(client, groups, sample, ports):
    slow = SlowBroker(ports["slow"])
    try:
        sugo_groups.write_group(groups, "schedule_desc_sugo_province", ["before"])
        body = local(SEED_SINGLE)
        del body["brokerUrl"]
        body["broker"] = f"127.0.0.1:{ports['slow']}"
        response = client.post("/ant/usergroup/single?async=true", json=body)
        assert response.status_code == 202
        job_id = response.get_json()["jobId"]
        wait_until(lambda: slow.query_ids, timeout=30, what="the query to reach the broker")
        headers = {"Authorization": f"Bearer {sample[2]}"}
        assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=headers).status_code == 202

        def failed():
            job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).get_json()
            return job if job["status"] == "failed" else None

        assert wait_until(failed, timeout=30, what="cancelled job")["error_code"] == "cancelled"
        assert slow.deleted == slow.query_ids[:1]
        assert read(groups, "schedule_desc_sugo_province") == ["before"]
    finally:
        slow.close()
