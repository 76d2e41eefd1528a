"""Bad input, auth and unreachable services: clear 4xx/503 bodies and nothing written or enqueued."""

from __future__ import annotations

import pytest

from app import create_app

GOOD = {"type": "profile", "property": "level", "cmp": "gte", "values": [1]}


def table_counts(pg, project_id):
    with pg.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM cohorts WHERE project_id = %s), (SELECT count(*) FROM jobs"
                    " WHERE project_id = %s)", (project_id, project_id))
        counts = cur.fetchone()
    pg.commit()
    return counts


@pytest.mark.parametrize(("body", "path", "fragment"), [
    ({"name": "x", "definition": {"op": "and", "children": [GOOD, {"type": "event", "event": "pay", "cmp": "gt",
                                                                    "values": [1], "window": {"last": 0}}]}},
     "definition.children[1].window.last", "must be >= 1"),
    ({"name": "x", "definition": GOOD, "colour": "red"}, "colour", "unknown field"),
    ({"name": 5, "definition": GOOD}, "name", "not a valid string"),
    ({"definition": GOOD}, "name", "missing data"),
    ({"name": "x", "definition": {"type": "profile", "property": "level", "cmp": "between", "values": [1]}},
     "definition.values", "exactly two"),
    ({"name": "x", "definition": {"op": "xor", "children": []}}, "definition.op", "must be one of"),
    ({"name": "x", "definition": GOOD, "dynamic": True}, "cron", "needs a cron"),
    ({"name": "x", "definition": GOOD, "dynamic": True, "cron": "every day"}, "cron", "not a valid cron"),
    ({"name": "x", "definition": GOOD, "dynamic": True, "cron": "0 0 30 2 *"}, "cron", "never fires"),
    ({"name": "x", "definition": {"type": "cohort", "cohort_id": 999999}}, "definition", "does not exist"),
])
def test_bad_input_is_400_naming_the_field_and_writes_nothing(client, api_project, pg, body, path, fragment):
    _, project_id, headers = api_project
    before = table_counts(pg, project_id)
    response = client.post("/api/v1/cohorts", json=body, headers=headers)
    assert response.status_code == 400, response.get_json()
    errors = response.get_json()["errors"]
    assert path in errors, errors
    assert any(fragment in message.lower() for message in errors[path]), errors
    assert table_counts(pg, project_id) == before


def test_malformed_json_is_400(client, api_project, pg):
    _, project_id, headers = api_project
    response = client.post("/api/v1/cohorts", data="{not json", headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert "JSON" in response.get_json()["error"]
    assert table_counts(pg, project_id) == (0, 0)


def test_missing_or_wrong_token_is_401(client, api_project):
    assert client.get("/api/v1/cohorts").status_code == 401
    assert client.get("/api/v1/cohorts", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/v1/cohorts", headers={"Authorization": "Basic abc"}).status_code == 401


def test_unknown_ids_and_other_projects_cohorts_are_404(client, api_project, database_url, pg):
    _, project_id, headers = api_project
    with pg.cursor() as cur:
        cur.execute("INSERT INTO projects (name) VALUES ('other-' || md5(random()::text)) RETURNING id")
        other = cur.fetchone()[0]
        cur.execute("INSERT INTO cohorts (project_id, name, definition) VALUES (%s, 'theirs', '{}') RETURNING id",
                    (other,))
        theirs = cur.fetchone()[0]
    pg.commit()
    assert client.get(f"/api/v1/cohorts/{theirs}", headers=headers).status_code == 404
    assert client.get("/api/v1/cohorts/987654", headers=headers).status_code == 404
    assert client.get("/api/v1/jobs/987654", headers=headers).status_code == 404
    assert client.post(f"/api/v1/cohorts/{theirs}/refresh", headers=headers).status_code == 404
    assert client.delete(f"/api/v1/cohorts/{theirs}", headers=headers).status_code == 404


def test_cycles_through_cohort_references_are_rejected(client, api_project, pg):
    _, project_id, headers = api_project
    first = client.post("/api/v1/cohorts", json={"name": "first", "definition": GOOD}, headers=headers).get_json()
    first_id = first["cohort"]["id"]
    second = client.post("/api/v1/cohorts", json={"name": "second", "definition": {
        "type": "cohort", "cohort_id": first_id}}, headers=headers).get_json()
    response = client.patch(f"/api/v1/cohorts/{first_id}", json={"definition": {
        "type": "cohort", "cohort_id": second["cohort"]["id"]}}, headers=headers)
    assert response.status_code == 400
    assert "cycle" in response.get_json()["errors"]["definition"][0]


def test_unreachable_broker_is_503_and_nothing_is_written(service_settings, celery_app, api_project, pg):
    from dataclasses import replace

    _, project_id, headers = api_project
    # A port nothing listens on stands for a Redis broker that is down.
    down = replace(service_settings, broker_url="redis://127.0.0.1:1/0")
    client = create_app({"TESTING": True, "SETTINGS": down, "CELERY": celery_app}).test_client()
    response = client.post("/api/v1/cohorts", json={"name": "x", "definition": GOOD}, headers=headers)
    assert response.status_code == 503
    assert "unreachable" in response.get_json()["error"]
    assert table_counts(pg, project_id) == (0, 0)


def test_unreachable_postgres_is_503(service_settings, celery_app):
    from dataclasses import replace

    engine = replace(service_settings.engine, database_url="postgresql://postgres@127.0.0.1:1/none")
    client = create_app({"TESTING": True, "SETTINGS": replace(service_settings, engine=engine),
                         "CELERY": celery_app}).test_client()
    response = client.get("/api/v1/cohorts", headers={"Authorization": "Bearer x"})
    assert response.status_code == 503
    assert "PostgreSQL" in response.get_json()["error"]
    health = client.get("/healthz")
    assert health.status_code == 503 and health.get_json()["checks"]["postgres"]["ok"] is False


def test_openapi_document_and_docs_page(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/cohorts" in spec["paths"] and "/api/v1/jobs/{job_id}" in spec["paths"]
    assert "definition" in spec["components"]["schemas"]["CohortCreate"]["properties"]
    page = client.get("/docs")
    assert page.status_code == 200 and b"swagger" in page.data.lower()
    assert client.get("/docs/static/swagger-ui-bundle.js").status_code == 200




def test_metrics_count_jobs_by_kind_and_status(client, api_project):
    _, _, headers = api_project
    client.post("/api/v1/cohorts", json={"name": "counted", "definition": GOOD}, headers=headers)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'cohorts_jobs{kind="create",status=' in text
    assert "cohorts_oldest_new_job_seconds" in text and "cohorts_max_heartbeat_lag_seconds" in text
