"""Version history, diff and preview end to end (HTTP -> job row -> real Celery worker), checked against the
brute-force reference (tests/cohort_engine/reference.py) over a small random dataset."""

from __future__ import annotations

import csv
import io
import random
from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from cohort_engine import db
from cohort_engine.definition import parse_definition
from cohort_engine.project import ProjectEngine
from tests.app.test_cohorts_api import poll_job
from tests.cohort_engine.reference import Dataset, Reference, load_into, write_parquet
from tests.services import wait_until

BASE = datetime(2024, 3, 10, tzinfo=UTC)
LEVEL_4 = {"type": "profile", "property": "level", "cmp": "gte", "values": [4]}
LEVEL_6 = {"type": "profile", "property": "level", "cmp": "gte", "values": [6]}
PAID_TWICE = {"type": "event", "event": "pay", "window": {"start": "2024-03-01", "end": "2024-03-09"},
              "cmp": "gte", "values": [2]}
SECOND = {"op": "or", "children": [LEVEL_6, PAID_TWICE]}


@pytest.fixture
def dataset(api_project, service_settings, tmp_path):
    """The api_project loaded with 60 random users (level 0..9, up to 3 pay events); (project, headers, Dataset)."""
    rng = random.Random(14)
    profiles = [{"key": f"u{i:02d}", "level": rng.randrange(10)} for i in range(60)]
    events = [{"key": p["key"], "event": "pay", "time": datetime(2024, 3, rng.randrange(1, 10), 12, tzinfo=UTC)}
              for p in profiles for _ in range(rng.randrange(4))]
    data = Dataset(profiles, events, {"level": "number"}, {})
    name, project_id, headers = api_project
    load_into(ProjectEngine(service_settings.engine, name), data, tmp_path / "input")
    return (name, project_id), headers, data


def members(data: Dataset, tree: dict) -> set[str]:
    return Reference(data, ZoneInfo("UTC"), BASE).members(parse_definition(tree))


def computed(client, headers, response) -> dict:
    assert response.status_code == 202, response.get_json()
    job, _ = poll_job(client, headers, response.get_json()["job"]["id"])
    assert job["status"] == "succeed", job
    return job


def csv_keys(response) -> set[str]:
    assert response.status_code == 200 and response.mimetype == "text/csv", response.get_data(as_text=True)[:300]
    return {row[0] for row in csv.reader(io.StringIO(response.get_data(as_text=True)))}


def test_versions_and_diff_match_the_reference(client, worker, dataset):
    _, headers, data = dataset
    first, second = members(data, LEVEL_4), members(data, SECOND)
    assert first - second and second - first, "the dataset must make both sides of the diff non-empty"
    created = client.post("/api/v1/cohorts", json={"name": "history", "definition": LEVEL_4,
                                                   "dynamic": False}, headers=headers)
    computed(client, headers, created)
    cohort_id = created.get_json()["cohort"]["id"]
    computed(client, headers, client.patch(f"/api/v1/cohorts/{cohort_id}", json={"definition": SECOND},
                                           headers=headers))
    computed(client, headers, client.post(f"/api/v1/cohorts/{cohort_id}/refresh", headers=headers))

    page = client.get(f"/api/v1/cohorts/{cohort_id}/versions", headers=headers).get_json()
    assert page["total"] == 3
    v3, v2, v1 = page["versions"]  # newest first
    assert [v["count"] for v in (v1, v2, v3)] == [len(first), len(second), len(second)]
    assert [v["status"] for v in (v1, v2, v3)] == ["succeed"] * 3
    assert [v["published"] for v in (v1, v2, v3)] == [False, False, True]
    assert all(v["kept"] and v["error_code"] is None for v in (v1, v2, v3))
    # Who entered and left, against the version published before (a first version: everyone entered).
    assert (v1["entered"], v1["left"], v1["previous_version_id"]) == (len(first), 0, None)
    assert (v2["entered"], v2["left"], v2["previous_version_id"]) == (len(second - first), len(first - second), v1["id"])
    assert (v3["entered"], v3["left"], v3["previous_version_id"]) == (0, 0, v2["id"])
    for version in (v1, v2, v3):
        assert version["duration_seconds"] is not None and version["duration_seconds"] >= 0
        assert version["started_at"] <= version["finished_at"] and version["job_id"]
    # Per-leaf timings: one entry per leaf, each with the count of users that leaf matched (by the reference).
    leaf_counts = {t["leaf"]: t["count"] for t in v2["timings"]}
    assert leaf_counts == {"children[0]": len(members(data, LEVEL_6)), "children[1]": len(members(data, PAID_TWICE))}
    assert all(t["seconds"] >= 0 for t in v2["timings"])

    diff = client.get(f"/api/v1/cohorts/{cohort_id}/diff?from={v1['id']}&to={v2['id']}", headers=headers).get_json()
    assert diff["entered"] == len(second - first) and diff["left"] == len(first - second)
    assert (diff["from"]["id"], diff["from"]["count"], diff["to"]["count"]) == (v1["id"], len(first), len(second))
    base = f"/api/v1/cohorts/{cohort_id}/diff?from={v1['id']}&to={v2['id']}"
    assert csv_keys(client.get(base + "&side=entered", headers=headers)) == second - first
    assert csv_keys(client.get(base + "&side=left", headers=headers)) == first - second
    # Reversed, the sides swap.
    back = f"/api/v1/cohorts/{cohort_id}/diff?from={v2['id']}&to={v1['id']}&side=entered"
    assert csv_keys(client.get(back, headers=headers)) == first - second
    # Defaults: the published version against the one published before it.
    latest = client.get(f"/api/v1/cohorts/{cohort_id}/diff", headers=headers).get_json()
    assert (latest["from"]["id"], latest["to"]["id"], latest["entered"], latest["left"]) == (v2["id"], v3["id"], 0, 0)
    paged = client.get(f"/api/v1/cohorts/{cohort_id}/versions?per_page=1&page=2", headers=headers).get_json()
    assert [v["id"] for v in paged["versions"]] == [v2["id"]] and paged["total"] == 3


def test_refreshes_of_unchanged_data_reuse_leaf_answers_and_an_ingest_computes_them_again(
        client, worker, dataset, service_settings, tmp_path):
    (name, _), headers, data = dataset
    created = client.post("/api/v1/cohorts", json={"name": "reused", "definition": SECOND, "dynamic": False},
                          headers=headers)
    computed(client, headers, created)
    cohort_id = created.get_json()["cohort"]["id"]
    for _ in range(3):
        computed(client, headers, client.post(f"/api/v1/cohorts/{cohort_id}/refresh", headers=headers))
    versions = client.get(f"/api/v1/cohorts/{cohort_id}/versions", headers=headers).get_json()["versions"]
    assert [v["count"] for v in versions] == [len(members(data, SECOND))] * 4
    # Four runs on the worker's two processes: each process computes its first, the rest reuse it.
    reused = [v for v in versions if {t.get("reused") for t in v["timings"]} == {"process"}]
    assert len(reused) >= 2
    # A new ingest (new store snapshot): every leaf computed again, over the new data.
    more = [{"key": p["key"], "event": "pay", "time": datetime(2024, 3, 5, 12, tzinfo=UTC)} for p in data.profiles[:20]]
    data.events.extend(more)
    write_parquet(more, {}, {"key": "distinct_id", "event": "event", "time": "time"}, tmp_path / "more.parquet")
    ProjectEngine(service_settings.engine, name).ingest_events(tmp_path / "more.parquet")
    computed(client, headers, client.post(f"/api/v1/cohorts/{cohort_id}/refresh", headers=headers))
    latest = client.get(f"/api/v1/cohorts/{cohort_id}/versions", headers=headers).get_json()["versions"][0]
    assert latest["count"] == len(members(data, SECOND)) != versions[0]["count"]
    assert all("reused" not in t for t in latest["timings"])


def test_diff_refuses_versions_it_cannot_compare(client, worker, dataset, database_url):
    _, headers, _ = dataset
    one = client.post("/api/v1/cohorts", json={"name": "one", "definition": LEVEL_4}, headers=headers)
    other = client.post("/api/v1/cohorts", json={"name": "other", "definition": LEVEL_6}, headers=headers)
    computed(client, headers, one)
    other_version = computed(client, headers, other)["result"]["version_id"]
    cohort_id = one.get_json()["cohort"]["id"]
    url = f"/api/v1/cohorts/{cohort_id}/diff"
    # Another cohort's version is not this cohort's: 404 naming the parameter.
    answer = client.get(f"{url}?from={other_version}", headers=headers)
    assert answer.status_code == 404 and "from" in answer.get_json()["errors"]
    # A first version has nothing before it to compare with.
    answer = client.get(url, headers=headers)
    assert answer.status_code == 409 and "from" in answer.get_json()["errors"]
    for bad in ("side=both", "from=0", "to=x"):
        answer = client.get(f"{url}?{bad}", headers=headers)
        assert answer.status_code == 400, (bad, answer.get_json())
    # An expired version keeps its row (count) but not its members: 409, not an empty diff.
    version_id = client.get(f"/api/v1/cohorts/{cohort_id}", headers=headers).get_json()["latest_version"]["id"]
    computed(client, headers, client.post(f"/api/v1/cohorts/{cohort_id}/refresh", headers=headers))
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE cohort_versions SET bitmap_key = NULL, bitmap = NULL, expired_at = now() WHERE id = %s",
                    (version_id,))
    answer = client.get(f"{url}?from={version_id}", headers=headers)
    assert answer.status_code == 409 and "no longer kept" in answer.get_json()["errors"]["from"][0]
    listed = client.get(f"/api/v1/cohorts/{cohort_id}/versions", headers=headers).get_json()["versions"]
    assert [v["kept"] for v in listed] == [True, False]


def cohort_and_job_counts(database_url: str, project_id: int) -> tuple[int, int]:
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM cohorts WHERE project_id = %s),"
                    " (SELECT count(*) FROM jobs WHERE project_id = %s)", (project_id, project_id))
        return cur.fetchone()


def test_preview_answers_count_and_sample_and_saves_no_cohort(client, worker, dataset, database_url):
    (_, project_id), headers, data = dataset
    expected = members(data, SECOND)
    answer = client.post("/api/v1/cohorts/preview", json={"definition": SECOND, "sample": 5}, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["count"] == len(expected)
    assert len(body["sample"]) == 5 and set(body["sample"]) <= expected
    assert body["job"]["kind"] == "preview" and body["job"]["cohort_id"] is None
    assert cohort_and_job_counts(database_url, project_id)[0] == 0
    # Refused input writes nothing, not even a job.
    before = cohort_and_job_counts(database_url, project_id)
    for bad in ({"definition": {"type": "profile"}}, {"definition": SECOND, "sample": 101}, {"sample": 3},
                {"definition": {"type": "cohort", "cohort_id": 999999}}):
        refused = client.post("/api/v1/cohorts/preview", json=bad, headers=headers)
        assert refused.status_code == 400, (bad, refused.get_json())
        assert any(k.startswith(("definition", "sample")) for k in refused.get_json()["errors"]), refused.get_json()
    assert cohort_and_job_counts(database_url, project_id) == before


def test_preview_past_its_bound_answers_202_and_the_job_is_swept(service_settings, celery_app, worker,
                                                                  maintenance_worker, dataset, database_url):
    from app import create_app

    (_, project_id), headers, data = dataset
    expected = members(data, LEVEL_6)
    # No wait at all: the answer is 202 whatever the worker's speed.
    app = create_app({"TESTING": True, "SETTINGS": replace(service_settings, preview_wait_seconds=0.0),
                      "CELERY": celery_app})
    client = app.test_client()
    answer = client.post("/api/v1/cohorts/preview", json={"definition": LEVEL_6}, headers=headers)
    assert answer.status_code == 202, answer.get_json()
    job_id = answer.get_json()["job"]["id"]
    assert answer.headers["Location"] == f"/api/v1/jobs/{job_id}"
    job, _ = poll_job(client, headers, job_id)
    assert job["status"] == "succeed" and job["result"]["count"] == len(expected)
    assert set(job["result"]["sample"]) <= expected
    assert len(job["result"]["sample"]) == min(service_settings.preview_sample, len(expected))
    assert cohort_and_job_counts(database_url, project_id) == (0, 1)
    # Once older than COHORTS_PREVIEW_KEEP_SECONDS, the sweeper deletes the finished preview job.
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE jobs SET finished_at = now() - make_interval(secs => %s) WHERE id = %s",
                    (service_settings.preview_keep_seconds + 60, job_id))
    celery_app.send_task("cohorts.sweep")
    wait_until(lambda: client.get(f"/api/v1/jobs/{job_id}", headers=headers).status_code == 404, timeout=20,
               what="the sweeper to delete the preview job")
    assert cohort_and_job_counts(database_url, project_id) == (0, 0)


def test_preview_whose_job_fails_answers_422_with_its_error(client, worker, api_project, database_url):
    _, project_id, headers = api_project
    with db.connection(database_url) as conn, conn.cursor() as cur:
        # A backend kind nobody registered: the job fails `unsupported` (a failure only the job can see).
        cur.execute("UPDATE projects SET backend = '{\"kind\": \"nowhere\"}' WHERE id = %s", (project_id,))
    answer = client.post("/api/v1/cohorts/preview", json={"definition": LEVEL_4}, headers=headers)
    assert answer.status_code == 422, answer.get_json()
    body = answer.get_json()
    assert body["error_code"] == "unsupported" and body["job"]["status"] == "failed" and body["error"]
    assert cohort_and_job_counts(database_url, project_id) == (0, 1)


def tag_levels(high: int) -> dict:
    return {"kind": "values", "default": "low", "values": [
        {"value": "high", "definition": {"type": "profile", "property": "level", "cmp": "gte", "values": [high]}},
        {"value": "mid", "definition": {"type": "profile", "property": "level", "cmp": "gte", "values": [3]}}]}


def test_tag_versions_and_distribution_diff(client, worker, dataset):
    _, headers, data = dataset

    def expected(high: int) -> dict:
        # First matching value wins, else the default (docs/definition.md "Tags"), by hand over the profiles.
        found: dict = {}
        for profile in data.profiles:
            value = "high" if profile["level"] >= high else "mid" if profile["level"] >= 3 else "low"
            found[value] = found.get(value, 0) + 1
        return found

    created = client.post("/api/v1/tags", json={"name": "levels", "definition": tag_levels(6)}, headers=headers)
    computed(client, headers, created)
    tag_id = created.get_json()["tag"]["id"]
    computed(client, headers, client.patch(f"/api/v1/tags/{tag_id}", json={"definition": tag_levels(8)},
                                           headers=headers))
    v2, v1 = client.get(f"/api/v1/tags/{tag_id}/versions", headers=headers).get_json()["versions"]
    assert (v2["previous_version_id"], v2["published"], v1["published"]) == (v1["id"], True, False)
    assert v2["entered"] is None and v2["timings"]
    before, after = expected(6), expected(8)
    assert before != after
    diff = client.get(f"/api/v1/tags/{tag_id}/diff", headers=headers).get_json()
    assert (diff["kind"], diff["from"]["id"], diff["to"]["id"]) == ("values", v1["id"], v2["id"])
    rows = {row["value"]: (row["from"], row["to"], row["change"]) for row in diff["values"]}
    assert rows == {value: (before.get(value, 0), after.get(value, 0), after.get(value, 0) - before.get(value, 0))
                    for value in set(before) | set(after)}
    assert [abs(row["change"]) for row in diff["values"]] == sorted((abs(r["change"]) for r in diff["values"]),
                                                                    reverse=True)
    assert diff["count"] == {"from": len(data.profiles), "to": len(data.profiles), "change": 0}
    back = client.get(f"/api/v1/tags/{tag_id}/diff?from={v2['id']}&to={v1['id']}", headers=headers).get_json()
    assert {row["value"]: row["change"] for row in back["values"]} == {v: -c[2] for v, c in rows.items()}
    # A tag is not a cohort (and the reverse): each path answers for its own kind only.
    assert client.get(f"/api/v1/cohorts/{tag_id}/versions", headers=headers).status_code == 404
    assert client.get(f"/api/v1/cohorts/{tag_id}/diff", headers=headers).status_code == 404
