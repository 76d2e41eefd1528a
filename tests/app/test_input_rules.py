"""App-wide input rules (docs/api.md): each class of client input that once answered 500 is a 400/404/413."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from app import create_app
from app.input_rules import MAX_JSON_DEPTH
from core.settings import Settings
from tests.app.test_api_errors import GOOD, table_counts

JSON_ENDPOINTS = [
    ("post", "/api/v1/cohorts"), ("put", "/api/v1/cohorts/1"), ("post", "/segmenter/rule"),
    ("post", "/segmenter/execute"), ("post", "/segmenter/status"), ("post", "/ant/usergroup/single"),
    ("post", "/ant/usergroup/multi"), ("post", "/ant/tag/usergroup/batchUpdate"),
    ("post", "/ant/tag/query/batchUpdate"), ("post", "/druid/v2"),
]


def raw(client, method, path, text, headers):
    return getattr(client, method)(path, data=text, headers={**headers, "Content-Type": "application/json"})


def error_text(response) -> str:
    return json.dumps(response.get_json())


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS)
@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 1000, 100000])
def test_deep_json_is_400_with_the_limit_on_every_json_endpoint(client, api_project, method, path, levels):
    _, _, headers = api_project
    response = raw(client, method, path, "[" * levels + "]" * levels, headers)
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in error_text(response)


def test_deep_druid_filters_are_answered_in_druid_shape(client, api_project):
    _, _, headers = api_project
    selector = '{"type": "selector", "dimension": "a", "value": "b"}'
    query = ('{"queryType": "timeseries", "dataSource": "tag_bank", "intervals": "1000/3000", "filter": '
             + '{"type": "not", "field": ' * 700 + selector + "}" * 700 + "}")
    response = raw(client, "post", "/druid/v2", query, headers)
    assert response.status_code == 400
    assert "nested deeper" in response.get_json()["errorMessage"]


def nested_not(levels: int) -> str:
    """JSON text, built as text: encoding 1000 levels would itself exceed Python's recursion limit."""
    return '{"op": "not", "child": ' * levels + json.dumps(GOOD) + "}" * levels


def test_deep_native_trees_are_400_naming_the_limit(client, api_project, pg):
    _, project_id, headers = api_project
    for levels in (1000, 40):
        response = raw(client, "post", "/api/v1/cohorts", f'{{"name": "deep", "definition": {nested_not(levels)}}}',
                       headers)
        assert response.status_code == 400 and "nested deeper than" in error_text(response)
    assert response.status_code == 400
    assert response.get_json()["errors"]["definition"] == ["nested deeper than 32 levels"]
    assert table_counts(pg, project_id) == (0, 0)


def test_deep_sensors_trees_are_400_naming_the_limit(client, api_project):
    _, _, headers = api_project
    rule = '{"type": "profile_rule", "field": "user.level", "function": "isSet", "params": []}'
    for levels in (1000, 40):
        content = '{"type": "rules_relation", "relation": "and", "rules": [' * levels + rule + "]}" * levels
        body = f'{{"id": 0, "name": "deep", "cname": "deep", "type": 0, "content": {content}}}'
        response = raw(client, "post", "/segmenter/rule", body, headers)
        assert response.status_code == 400 and "nested deeper than" in error_text(response)


@pytest.mark.parametrize(("text", "path"), [
    ('{"name": "x", "definition": %s, "display_name": NaN}', "display_name"),
    ('{"name": "x", "definition": %s, "owner": Infinity}', "owner"),
    ('{"name": "x", "definition": %s, "owner": -Infinity}', "owner"),
    ('{"name": "x", "definition": {"type": "profile", "property": "level", "cmp": "gt", "values": [1e400]}}',
     "definition.values[0]"),
    ('{"name": "x", "definition": %s, "owner": "a\\u0000b"}', "owner"),
    ('{"name": "x", "definition": {"type": "ids", "keys": ["\\ud800"]}}', "definition.keys[0]"),
    ('{"name": "x", "definition": %s, "display_name": "\\udfff tail"}', "display_name"),
    ('{"name": "x", "definition": %s, "a\\u0000": 1}', "a\\x00"),
])
def test_unstorable_json_values_are_400_naming_the_field(client, api_project, pg, text, path):
    _, project_id, headers = api_project
    response = raw(client, "post", "/api/v1/cohorts", text.replace("%s", json.dumps(GOOD)), headers)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert path in response.get_json()["errors"], response.get_json()
    assert table_counts(pg, project_id) == (0, 0)


def test_unstorable_sensors_cname_is_400(client, api_project):
    _, _, headers = api_project
    body = ('{"id": 0, "name": "n", "cname": "a\\u0000", "type": 0, "content": {"type": "rules_relation",'
            ' "relation": "and", "rules": [{"type": "profile_rule", "field": "user.level", "function": "isSet"}]}}')
    response = raw(client, "post", "/segmenter/rule", body, headers)
    assert response.status_code == 400 and "cname" in response.get_json()["errors"]


def test_nul_in_path_query_or_token_is_400_naming_it(client, api_project):
    _, _, headers = api_project
    cohort = client.post("/api/v1/cohorts", json={"name": "m", "definition": GOOD}, headers=headers).get_json()
    response = client.get(f"/api/v1/cohorts/{cohort['cohort']['id']}/members/a%00b", headers=headers)
    assert response.status_code == 400 and "user_key" in response.get_json()["errors"]
    response = client.get("/segmenter/rule/all?token=a%00b")
    assert response.status_code == 400 and "token" in response.get_json()["errors"]
    response = client.get("/api/v1/jobs?status=new%00", headers=headers)
    assert response.status_code == 400 and "status" in response.get_json()["errors"]


@pytest.mark.parametrize("path", ["/api/v1/cohorts", "/api/v1/jobs", "/api/v1/cohorts/1/members"])
@pytest.mark.parametrize("page", ["9223372036854775808", "1000001", "0"])
def test_page_numbers_are_bounded(client, api_project, path, page):
    _, _, headers = api_project
    response = client.get(f"{path}?page={page}&format=json" if "members" in path else f"{path}?page={page}",
                          headers=headers)
    assert response.status_code in (400, 404), response.get_data(as_text=True)
    if response.status_code == 400:
        assert "page" in response.get_json()["errors"]


def test_job_filter_and_path_ids_beyond_the_columns_are_400_or_404(client, api_project):
    _, _, headers = api_project
    response = client.get(f"/api/v1/jobs?cohort_id={2**63}", headers=headers)
    assert response.status_code == 400 and "cohort_id" in response.get_json()["errors"]
    for method, path in [("get", f"/api/v1/jobs/{2**63}"), ("post", f"/api/v1/jobs/{2**63}/cancel"),
                         ("get", f"/api/v1/cohorts/{2**31}"), ("delete", f"/api/v1/cohorts/{2**31}"),
                         ("delete", f"/api/v1/cohorts/{10**30}"), ("get", f"/segmenter/rule/{2**31}"),
                         ("delete", f"/segmenter/rule/{2**63}")]:
        assert getattr(client, method)(path, headers=headers).status_code == 404, (method, path)


def test_body_size_is_limited_by_a_setting_and_answered_413(service_settings, celery_app, api_project):
    assert Settings.from_env({"COHORTS_MAX_BODY_BYTES": "12345"}).max_body_bytes == 12345
    _, project_id, headers = api_project
    small = create_app({"TESTING": True, "SETTINGS": replace(service_settings, max_body_bytes=1000),
                        "CELERY": celery_app}).test_client()
    body = {"name": "big", "definition": {"type": "ids", "keys": [f"user-{i}" for i in range(200)]}}
    for path in ("/api/v1/cohorts", "/segmenter/rule", "/ant/usergroup/single"):
        response = small.post(path, json=body, headers=headers)
        assert response.status_code == 413, path
        assert "COHORTS_MAX_BODY_BYTES" in response.get_json()["error"]
    assert small.post("/druid/v2", json=body, headers=headers).get_json()["errorMessage"]


def test_default_body_limit_is_applied(app):
    assert app.config["MAX_CONTENT_LENGTH"] == Settings().max_body_bytes


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, "false", {}])
def test_dynamic_takes_json_booleans_only(client, api_project, value):
    _, _, headers = api_project
    response = client.post("/api/v1/cohorts", json={"name": "b", "definition": GOOD, "dynamic": value,
                                                    "cron": "0 3 * * *"}, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["errors"]["dynamic"] == ["must be true or false (a JSON boolean)"]


def test_405_carries_allow_and_error_bodies_have_one_shape(client, api_project):
    _, _, headers = api_project
    response = client.patch("/api/v1/jobs", headers=headers)
    assert response.status_code == 405 and "GET" in response.headers["Allow"]
    assert set(response.get_json()) == {"error"}
    response = client.post("/api/v1/cohorts", json={"name": 5, "definition": GOOD}, headers=headers)
    assert response.status_code == 400 and set(response.get_json()) == {"error", "errors"}


def test_regex_the_store_cannot_run_is_refused_at_save(client, api_project):
    _, _, headers = api_project
    definition = {"type": "profile", "property": "name", "cmp": "regex", "values": ["(a)\\1"]}
    response = client.post("/api/v1/cohorts", json={"name": "re", "definition": definition}, headers=headers)
    assert response.status_code == 400 and "RE2" in response.get_json()["errors"]["definition.values"][0]


@pytest.mark.parametrize("path", ["/segmenter/execute", "/segmenter/status"])
def test_sensors_base_time_before_year_1000_is_400(client, api_project, path):
    _, _, headers = api_project
    response = client.post(path, json=[{"id": 1, "base_time_list": ["0001-01-01 00:00:00"]}], headers=headers)
    assert response.status_code == 400 and "[0].base_time_list[0]" in response.get_json()["errors"]
