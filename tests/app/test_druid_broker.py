"""/druid/v2 under the broker's limits (settings, Druid's error bodies over HTTP) and who may read /metrics."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from core.settings import Settings
from tests.services import create_sample_project

RESOURCE = ("Resource limit exceeded", "org.apache.druid.query.ResourceLimitExceededException")


@pytest.fixture(scope="module")
def broker_project(database_url, service_settings, tmp_path_factory):
    return create_sample_project(database_url, service_settings.engine, tmp_path_factory.mktemp("druid-broker"),
                                 200, 3000, seed=4, prefix="db")


def _client(service_settings, celery_app, project, **overrides):
    from app import create_app

    settings = replace(service_settings, sugo_project=project[0], **overrides)
    return create_app({"TESTING": True, "SETTINGS": settings, "CELERY": celery_app}).test_client()


def _post(client, project, query, path="/druid/v2"):
    body = query if isinstance(query, (bytes, str)) else json.dumps(query)
    return client.post(path, data=body, content_type="application/json",
                       headers={"Authorization": f"Bearer {project[2]}"})


def _timeseries(granularity):
    return {"queryType": "timeseries", "dataSource": "schedule_desc", "intervals": "1000/3000",
            "granularity": granularity, "aggregations": [{"type": "count", "name": "count"},
                                                         {"type": "doubleSum", "name": "s", "fieldName": "age"}]}


def test_limit_settings_come_from_the_environment():
    limits = Settings.from_env({"COHORTS_DRUID_MAX_BUCKETS": "10", "COHORTS_DRUID_MAX_ROWS": "20",
                                "COHORTS_DRUID_MAX_RESPONSE_BYTES": "30", "COHORTS_DRUID_TIMEOUT_MS": "40",
                                "COHORTS_DRUID_MAX_DEPTH": "50"}).druid_limits
    assert (limits.max_buckets, limits.max_rows, limits.max_response_bytes, limits.timeout_ms,
            limits.max_depth) == (10, 20, 30, 40, 50)
    default = Settings().druid_limits
    assert default.max_buckets and default.max_rows and default.max_response_bytes and default.timeout_ms


@pytest.mark.parametrize("granularity", ["second", {"type": "duration", "duration": 1}])
def test_the_issues_small_queries_are_refused_at_once_with_defaults(service_settings, celery_app, broker_project,
                                                                  granularity):
    client = _client(service_settings, celery_app, broker_project)
    started = time.monotonic()
    response = _post(client, broker_project, _timeseries(granularity))
    elapsed = time.monotonic() - started
    body = response.get_json()
    assert response.status_code == 400 and (body["error"], body["errorClass"]) == RESOURCE
    assert "COHORTS_DRUID_MAX_BUCKETS" in body["errorMessage"] and set(body) == {"error", "errorMessage",
                                                                                 "errorClass", "host"}
    assert elapsed < 2 and len(response.data) < 1000
    day = _post(client, broker_project, _timeseries("day"))
    assert day.status_code == 200
    assert sum(r["result"]["count"] for r in day.get_json()) == broker_project[3]["event_count"]


def test_rows_and_bytes_limits_apply_over_http(service_settings, celery_app, broker_project):
    scan = {"queryType": "scan", "dataSource": "schedule_desc", "intervals": "1000/3000", "columns": ["event"]}
    client = _client(service_settings, celery_app, broker_project, druid_max_rows=100)
    body = _post(client, broker_project, scan).get_json()
    assert (body["error"], body["errorClass"]) == RESOURCE and "more than 100 rows" in body["errorMessage"]
    client = _client(service_settings, celery_app, broker_project, druid_max_response_bytes=5000)
    response = _post(client, broker_project, scan, "/druid/v2?pretty")
    assert response.status_code == 400 and "byte limit" in response.get_json()["errorMessage"]
    assert "\n  " in response.get_data(as_text=True)
    ok = _post(_client(service_settings, celery_app, broker_project), broker_project, scan)
    assert ok.status_code == 200
    assert sum(len(b["events"]) for b in ok.get_json()) == broker_project[3]["event_count"]


def test_deep_nesting_and_bad_bodies_are_druid_400s(service_settings, celery_app, broker_project):
    client = _client(service_settings, celery_app, broker_project)
    deep_not = '{"type": "not", "field": ' * 700 + '{"type": "true"}' + "}" * 700
    query = json.dumps(_timeseries("all")).replace('"granularity"', '"filter": ' + deep_not + ', "granularity"')
    for body in (query, "[" * 100_000, b"\xff\xfe{", "{not json", ""):
        response = _post(client, broker_project, body)
        answer = response.get_json()
        assert response.status_code == 400, (body[:40], response.data[:200])
        assert set(answer) == {"error", "errorMessage", "errorClass", "host"}
    # The app-wide JSON depth rule (docs/api.md) answers first; the broker's own depth limit
    # (COHORTS_DRUID_MAX_DEPTH) is tested on the engine in tests/cohort_engine/druid/test_limits.py.
    response = _post(client, broker_project, query)
    assert "nested deeper than 100 levels" in response.get_json()["errorMessage"]


# -- /metrics: loopback only unless COHORTS_METRICS_TOKEN is set and sent --------------------------------


def _metrics(client, remote="127.0.0.1", **headers):
    return client.get("/metrics", environ_base={"REMOTE_ADDR": remote}, headers=headers)


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"])
def test_metrics_answer_loopback_scrapes(service_settings, celery_app, broker_project, remote):
    response = _metrics(_client(service_settings, celery_app, broker_project), remote)
    assert response.status_code == 200 and "cohorts_jobs" in response.get_data(as_text=True)


def test_metrics_refuse_remote_and_forwarded_clients_without_a_token(service_settings, celery_app, broker_project):
    client = _client(service_settings, celery_app, broker_project)
    for response in (_metrics(client, "10.1.2.3"), _metrics(client, "192.168.0.9", Authorization="Bearer x"),
                     _metrics(client, "::ffff:10.1.2.3"), _metrics(client, "not-an-address"),
                     _metrics(client, "127.0.0.1", **{"X-Forwarded-For": "203.0.113.7"})):
        assert response.status_code == 403
        assert "COHORTS_METRICS_TOKEN" in response.get_json()["error"]
        assert "cohorts_jobs" not in response.get_data(as_text=True)


def test_metrics_token_opens_remote_scrapes(service_settings, celery_app, broker_project):
    client = _client(service_settings, celery_app, broker_project, metrics_token="scrape-secret")
    assert _metrics(client, "10.1.2.3").status_code == 401
    assert _metrics(client, "10.1.2.3", Authorization="Bearer wrong").status_code == 403
    assert _metrics(client, "10.1.2.3", Authorization=f"Bearer {broker_project[2]}").status_code == 403
    response = _metrics(client, "10.1.2.3", Authorization="Bearer scrape-secret")
    assert response.status_code == 200 and "cohorts_oldest_new_job_seconds" in response.get_data(as_text=True)
    assert _metrics(client).status_code == 200
