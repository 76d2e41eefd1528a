"""A tag version pushed to a Sugo hproxy as one column: a real worker, and hproxy = a small real HTTP server
in this test (tests/dialects/sugo/test_jobs.py's recording Hproxy), since no vendor hproxy can be had here."""

from __future__ import annotations

import pytest

from tests.app.test_cohorts_api import poll_job
from tests.app.test_tags_api import LAST_CHANNEL, LAST_EXPECTED, METRIC, computed, create, loaded  # noqa: F401
from tests.services import allow_sugo_targets

from .test_jobs import Hproxy


@pytest.fixture
def hproxy():
    server = Hproxy()
    yield server
    server.close()


def test_push_sends_every_value_as_one_column(client, worker, loaded, hproxy, database_url):  # noqa: F811
    _, project_id, headers = loaded
    allow_sugo_targets(database_url, project_id, hproxy=[f"127.0.0.1:{hproxy.port}"])
    last = computed(client, headers, "last_channel", LAST_CHANNEL)
    spend = computed(client, headers, "spend", {k: v for k, v in METRIC.items() if k != "buckets"})
    for tag, column, expected in ((last, "s_channel", LAST_EXPECTED),
                                  (spend, "f_spend", {"a": 13, "b": 20, "c": 0, "d": 0, "e": 5})):
        hproxy.reset()
        response = client.post(f"/api/v1/tags/{tag['id']}/push/sugo", headers=headers, json={
            "hproxy": f"127.0.0.1:{hproxy.port}", "dataSource": "users", "column": column})
        assert response.status_code == 202, response.get_json()
        job, _ = poll_job(client, headers, response.get_json()["job"]["id"])
        assert job["status"] == "succeed", job
        assert job["result"]["success"] == len(expected) and job["result"]["failed"] == 0
        assert [path for path, _ in hproxy.requests] == ["/druid/proxy/batchupdate/users"]
        sent = {row["values"]["distinct_id"]: row["values"][column] for _, rows in hproxy.requests for row in rows}
        assert sent == expected
        assert all(set(row["values"]) == {column, "distinct_id"} for _, rows in hproxy.requests for row in rows)


def test_push_is_refused_before_anything_is_contacted(client, worker, loaded, hproxy):  # noqa: F811
    _, _, headers = loaded
    last = computed(client, headers, "last_channel", LAST_CHANNEL)
    body = {"hproxy": f"127.0.0.1:{hproxy.port}", "dataSource": "users", "column": "s_channel"}
    # Not on the project's allowlist: 400 naming the field, no job, nothing sent.
    response = client.post(f"/api/v1/tags/{last['id']}/push/sugo", headers=headers, json=body)
    assert response.status_code == 400 and "hproxy" in response.get_json()["errors"], response.get_json()
    for bad, field in (({"column": "ms_channel"}, "column"), ({"column": "distinct_id"}, "column"),
                       ({"hproxyUrl": "http://127.0.0.1:1/x"}, "hproxy"), ({"dataSource": "a/b"}, "dataSource")):
        response = client.post(f"/api/v1/tags/{last['id']}/push/sugo", headers=headers, json={**body, **bad})
        assert response.status_code == 400 and field in response.get_json()["errors"], (bad, response.get_json())
    # A tag without a version (an import whose IDs match nobody): 409.
    uploaded = client.post("/api/v1/tags/import", query_string={"name": "uploaded", "type": "string"},
                           data=b"nobody1,x\n", headers={**headers, "Content-Type": "text/csv"}).get_json()
    assert poll_job(client, headers, uploaded["job"]["id"])[0]["error_code"] == "import_no_match"
    waiting = uploaded["tag"]
    assert client.post(f"/api/v1/tags/{waiting['id']}/push/sugo", headers=headers, json=body).status_code == 409
    assert hproxy.requests == []
