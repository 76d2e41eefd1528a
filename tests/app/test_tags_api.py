"""The native tag API end to end: HTTP -> job row -> real Celery worker -> tag version -> reads.

The data is tiny so that every expected value is worked out by hand in the comments below (the
random comparison against the brute-force reference is tests/cohort_engine/backends/test_conformance.py).
"""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohort_engine.project import ProjectEngine

from .test_cohorts_api import poll_job

PROFILES = {"a": 1, "b": 3, "c": 5, "d": None}


def at(hour: int) -> datetime:
    return datetime(2024, 3, 1, hour, tzinfo=timezone.utc)


# (key, hour, amount, channel): a's last instant (11:00) has two channels, "app" and "ios";
# e's latest pay has no channel, so its last known channel is "app".
PAYS = [("a", 10, 5, "web"), ("a", 11, 7, "app"), ("a", 11, 1, "ios"), ("b", 9, 20, "web"),
        ("e", 12, 2, None), ("e", 8, 3, "app")]
WINDOW = {"start": "2024-03-01", "end": "2024-03-01"}
# Universe: a, b, c, d (profiles) and e (events only).
METRIC = {"kind": "metric", "event": "pay", "agg": {"fn": "sum", "property": "amount"}, "window": WINDOW,
          "buckets": [{"label": "low", "high": 10}, {"label": "mid", "low": 10, "high": 20},
                      {"label": "high", "low": 20}]}
# sums: a 13 (mid), b 20 (high: low inclusive), e 5, c 0, d 0 (low: no events count as 0)
METRIC_EXPECTED = {"a": "mid", "b": "high", "c": "low", "d": "low", "e": "low"}
LAST_CHANNEL = {"kind": "first_last", "which": "last", "event": "pay", "window": WINDOW, "property": "channel"}
# ties at a's 11:00 go to the larger value for last: "ios"
LAST_EXPECTED = {"a": "ios", "b": "web", "e": "app"}
SEGMENT = {"kind": "values", "values": [
    {"value": "vip", "definition": {"type": "profile", "property": "level", "cmp": "gte", "values": [3]}},
    {"value": "payer", "definition": {"type": "event", "event": "pay", "window": WINDOW, "cmp": "gte", "values": [1]}}],
    "default": "other"}
# b is vip and a payer: the first value wins
SEGMENT_EXPECTED = {"a": "payer", "b": "vip", "c": "vip", "d": "other", "e": "payer"}


@pytest.fixture
def loaded(api_project, service_settings, tmp_path):
    name, project_id, headers = api_project
    engine = ProjectEngine(service_settings.engine, name)
    pq.write_table(pa.table({"distinct_id": list(PROFILES), "level": pa.array(list(PROFILES.values()), pa.int64())}),
                   tmp_path / "u.parquet")
    pq.write_table(pa.table({
        "distinct_id": [p[0] for p in PAYS], "event": ["pay"] * len(PAYS),
        "time": pa.array([at(p[1]) for p in PAYS], pa.timestamp("us", tz="UTC")),
        "amount": pa.array([p[2] for p in PAYS], pa.int64()), "channel": [p[3] for p in PAYS]}), tmp_path / "e.parquet")
    engine.ingest_users(tmp_path / "u.parquet")
    engine.ingest_events(tmp_path / "e.parquet")
    return name, project_id, headers


def create(client, headers, name, definition, **extra) -> dict:
    response = client.post("/api/v1/tags", json={"name": name, "definition": definition, **extra}, headers=headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def computed(client, headers, name, definition) -> dict:
    created = create(client, headers, name, definition)
    job, _ = poll_job(client, headers, created["job"]["id"])
    assert job["status"] == "succeed", job
    return created["tag"]


def csv_map(client, headers, tag_id, query="") -> dict:
    response = client.get(f"/api/v1/tags/{tag_id}/values{query}", headers=headers)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    lines = response.get_data(as_text=True).splitlines()
    assert lines[0] == "key,value"
    assert response.headers["X-Total-Count"] == str(len(lines) - 1)
    return dict(line.split(",", 1) for line in lines[1:])


def test_every_kind_computes_and_reads(client, worker, loaded):
    _, _, headers = loaded
    metric = computed(client, headers, "spend", METRIC)
    last = computed(client, headers, "last_channel", LAST_CHANNEL)
    segment = computed(client, headers, "segment", SEGMENT)
    assert (metric["value_type"], last["value_type"], segment["value_type"]) == ("string", "string", "string")
    # The service filled in the first_last's type from the stored column.
    assert client.get(f"/api/v1/tags/{last['id']}", headers=headers).get_json()["definition"]["type"] == "string"
    for tag, expected in ((metric, METRIC_EXPECTED), (last, LAST_EXPECTED), (segment, SEGMENT_EXPECTED)):
        assert csv_map(client, headers, tag["id"]) == expected
        for key in ("a", "b", "c", "d", "e", "nobody"):
            answer = client.get(f"/api/v1/tags/{tag['id']}/values/{key}", headers=headers).get_json()
            assert answer["value"] == expected.get(key) and answer["value_type"] == "string"
        dist = client.get(f"/api/v1/tags/{tag['id']}/distribution", headers=headers).get_json()
        counts = {}
        for value in expected.values():
            counts[value] = counts.get(value, 0) + 1
        assert {v["value"]: v["count"] for v in dist["values"]} == counts and dist["count"] == len(expected)
    page = client.get(f"/api/v1/tags/{segment['id']}/values?format=json&per_page=2&page=2", headers=headers).get_json()
    assert page["total"] == 5 and page["values"] == [{"key": "c", "value": "vip"}, {"key": "d", "value": "other"}]
    assert csv_map(client, headers, segment["id"], "?value=vip&value=other") == {"b": "vip", "c": "vip", "d": "other"}
    # Tags are not cohorts: the cohort routes do not see them (one id space, two kinds of row).
    assert client.get(f"/api/v1/cohorts/{metric['id']}", headers=headers).status_code == 404
    assert metric["id"] not in [c["id"] for c in client.get("/api/v1/cohorts", headers=headers).get_json()["cohorts"]]
    assert {t["name"] for t in client.get("/api/v1/tags", headers=headers).get_json()["tags"]} == {
        "spend", "last_channel", "segment"}


def test_number_tag_reads_and_range(client, worker, loaded):
    _, _, headers = loaded
    plain = {k: v for k, v in METRIC.items() if k != "buckets"}
    tag = computed(client, headers, "spend_sum", plain)
    assert tag["value_type"] == "number"
    assert csv_map(client, headers, tag["id"]) == {"a": "13", "b": "20", "c": "0", "d": "0", "e": "5"}
    assert csv_map(client, headers, tag["id"], "?min=5&max=20") == {"a": "13", "e": "5"}
    assert client.get(f"/api/v1/tags/{tag['id']}/values/b", headers=headers).get_json()["value"] == 20
    too_long = client.get(f"/api/v1/tags/{tag['id']}/values/{'k' * 513}", headers=headers)
    assert too_long.status_code == 400 and "user_key" in too_long.get_json()["errors"], too_long.get_json()
    dist = client.get(f"/api/v1/tags/{tag['id']}/distribution", headers=headers).get_json()
    assert dist["kind"] == "values" and dist["min"] == 0 and dist["max"] == 20 and dist["sum"] == 38
    assert [(v["value"], v["count"]) for v in dist["values"]] == [(0, 2), (5, 1), (13, 1), (20, 1)]
    bad = client.get(f"/api/v1/tags/{tag['id']}/values?min=abc", headers=headers)
    assert bad.status_code == 400, bad.get_json()


def test_tag_leaves_in_cohorts(client, worker, loaded):
    _, _, headers = loaded
    last = computed(client, headers, "last_channel", LAST_CHANNEL)
    # ne includes the users without a value (c, d): the universe minus b.
    response = client.post("/api/v1/cohorts", json={"name": "not_web", "definition": {
        "type": "tag", "tag_id": last["id"], "cmp": "ne", "values": ["web"]}}, headers=headers)
    assert response.status_code == 202, response.get_json()
    job, _ = poll_job(client, headers, response.get_json()["job"]["id"])
    assert job["status"] == "succeed", job
    members = client.get(f"/api/v1/cohorts/{response.get_json()['cohort']['id']}/members", headers=headers)
    assert sorted(members.get_data(as_text=True).split()) == ["a", "c", "d", "e"]
    # A tag without a version: the cohort's job fails tag_not_ready (an import tag whose IDs match nobody).
    waiting = client.post("/api/v1/tags/import", query_string={"name": "uploaded", "type": "string"},
                          data=b"nobody1,x\n", headers={**headers, "Content-Type": "text/csv"}).get_json()
    assert poll_job(client, headers, waiting["job"]["id"])[0]["error_code"] == "import_no_match"
    response = client.post("/api/v1/cohorts", json={"name": "uses_uploaded", "definition": {
        "type": "tag", "tag_id": waiting["tag"]["id"], "cmp": "is_set"}}, headers=headers)
    job, _ = poll_job(client, headers, response.get_json()["job"]["id"])
    assert job["status"] == "failed" and job["error_code"] == "tag_not_ready", job
    # A tag that refers to the tag: deleting the referred one is refused while it is used.
    assert client.delete(f"/api/v1/tags/{last['id']}", headers=headers).status_code == 409


def test_values_tag_with_import_leaves(client, worker, loaded):
    _, _, headers = loaded
    stored = client.post("/api/v1/uploads", data=b"a\nc\nnobody\n", headers={**headers, "Content-Type": "text/csv"})
    assert stored.status_code == 201, stored.get_json()
    listed = {"type": "import", "upload_id": stored.get_json()["upload"]["id"]}
    payer = {"type": "event", "event": "pay", "window": WINDOW, "cmp": "gte", "values": [1]}
    tag = computed(client, headers, "listed", {"kind": "values", "values": [
        {"value": "listed_payer", "definition": {"op": "and", "children": [listed, payer]}},
        {"value": "listed", "definition": listed},
        {"value": "vip", "definition": SEGMENT["values"][0]["definition"]}], "default": "other"})
    # listed: a, c (nobody matches no user); payers: a, b, e; vip (level >= 3): b, c. First value wins:
    # a listed_payer, c listed, b vip; d and e nothing of those: other.
    assert csv_map(client, headers, tag["id"]) == {"a": "listed_payer", "b": "vip", "c": "listed", "d": "other",
                                                   "e": "other"}


def test_refused_at_save(client, loaded):
    _, _, headers = loaded

    def refused(path, body, field):
        response = client.post(path, json=body, headers=headers)
        assert response.status_code == 400, response.get_json()
        assert field in response.get_json()["errors"], response.get_json()

    overlap = {**METRIC, "buckets": [{"label": "x", "high": 10}, {"label": "y", "low": 5}]}
    refused("/api/v1/tags", {"name": "t1", "definition": overlap}, "definition.buckets[1].low")
    refused("/api/v1/tags", {"name": "t2", "definition": {"kind": "values", "values": [
        {"value": "a", "definition": {"type": "ids", "keys": []}}, {"value": 1, "definition": {"type": "ids", "keys": []}}]}},
        "definition.type")
    refused("/api/v1/tags", {"name": "t3", "definition": {**LAST_CHANNEL, "property": "nope"}}, "definition.property")
    spend = create(client, headers, "spend", {k: v for k, v in METRIC.items() if k != "buckets"})["tag"]
    cohort = client.post("/api/v1/cohorts", json={"name": "c1", "definition": {
        "type": "ids", "keys": ["a"]}}, headers=headers).get_json()["cohort"]
    refused("/api/v1/cohorts", {"name": "c2", "definition": {"type": "tag", "tag_id": spend["id"], "cmp": "contains",
                                                              "values": ["x"]}}, "definition.cmp")
    refused("/api/v1/cohorts", {"name": "c3", "definition": {"type": "cohort", "cohort_id": spend["id"]}},
            "definition.cohort_id")
    refused("/api/v1/cohorts", {"name": "c4", "definition": {"type": "tag", "tag_id": cohort["id"], "cmp": "is_set"}},
            "definition.tag_id")
    # A cycle through a tag: tag T's values use cohort C, then C is changed to use T.
    tag = create(client, headers, "uses_c1", {"kind": "values", "values": [
        {"value": "in", "definition": {"type": "cohort", "cohort_id": cohort["id"]}}]})["tag"]
    response = client.put(f"/api/v1/cohorts/{cohort['id']}", json={
        "name": "c1", "display_name": None, "dynamic": False, "cron": None, "owner": None,
        "definition": {"type": "tag", "tag_id": tag["id"], "cmp": "eq", "values": ["in"]}}, headers=headers)
    assert response.status_code == 400 and "cycle" in str(response.get_json()), response.get_json()
