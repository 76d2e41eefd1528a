"""The ThinkingData /open API end to end: seed 002's requests as written -> real worker -> answers in the seed's shape.

Counts are checked against the brute-force reference (tests/cohort_engine/reference.py) evaluating the
same rules written by hand as native canonical trees over the same sample rows.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from cohort_engine import db
from cohort_engine.project import ProjectEngine
from cohort_engine.tag_definition import parse_tag_definition
from core.data import projects
from tests.cohort_engine.reference import Reference
from tests.dialects.thinkingdata.sample import SEED, seed_request, write_dataset
from tests.dialects.thinkingdata.test_translate import CASES, count, profile
from tests.services import create_token_project, wait_until

SEED_CLUSTER = profile("user_level", "eq", 3)
SEED_NATIVE = {"op": "and", "children": [count("consume_item", "gt", 4, last=7, offset=1), SEED_CLUSTER]}
OK = {"return_code": 0, "return_message": "success"}


@pytest.fixture(scope="module")
def td(database_url, service_settings, tmp_path_factory):
    """A token project holding the sample data; the same rows as a reference."""
    name, project_id, token = create_token_project(database_url, "td")
    with db.connection(database_url) as conn:
        projects.set_daily_refresh_time(conn, project_id, "05:30")
    written, data = write_dataset(tmp_path_factory.mktemp("td-views"))
    engine = ProjectEngine(service_settings.engine, name)
    engine.ingest_users(written["users"])
    for part in written["events"]:
        engine.ingest_events(part)
    return SimpleNamespace(name=name, id=project_id, token=token, ref=Reference(data, UTC, datetime.now(UTC)))


def seed_url(path: str, td, cluster_id: int | None = None) -> str:
    """The seed's URL for path, as written, with this test's token, project id and cluster id."""
    (url,) = [u for u in SEED["urls"] if u.split("?")[0] == path and (cluster_id is None) == ("clusterId" not in u)]
    url = url.replace("token=xxx", f"token={td.token}")
    url = re.sub(r"projectId=(102|xxx)", f"projectId={td.id}", url)
    if cluster_id is not None:
        url = url.replace("clusterId=970", f"clusterId={cluster_id}")
    return url.replace(" ", quote(" "))


def by_name_url(path: str, td) -> str:
    """The seed's by-name URL of path (its clusterName as written, with the blank the seed has)."""
    (url,) = [u for u in SEED["urls"] if u.split("?")[0] == path and "clusterName" in u]
    url = re.sub(r"projectId=(102|xxx)", f"projectId={td.id}", url.replace("token=xxx", f"token={td.token}"))
    return url.replace(" ", quote(" "))


def post(client, url, body=None):
    response = client.post(url, json=body)
    return response.status_code, response.get_json()


def get(client, url):
    response = client.get(url)
    return response.status_code, response.get_json()


def add(client, td, body) -> int:
    status, answer = post(client, f"/open/user-cluster-add?token={td.token}", body)
    assert status == 200 and answer["return_code"] == 0, answer
    assert set(answer) == set(SEED["answers"]["add"]) and isinstance(answer["data"], int)
    return answer["data"]


def wait_done(client, td, cluster_id, expect=100) -> None:
    url = f"/open/user-cluster-refresh-progress?token={td.token}&projectId={td.id}&clusterId={cluster_id}"

    def ended():
        status, answer = get(client, url)
        assert status == 200, answer
        return answer["data"]["progress"] in (100, -1) and answer["data"]["progress"]
    assert wait_until(ended, timeout=60, interval=0.05, what=f"cluster {cluster_id}") == expect


def detail(client, td, cluster_id) -> dict:
    status, answer = get(client, f"/open/user-cluster-detail?token={td.token}&projectId={td.id}&clusterId={cluster_id}")
    assert status == 200 and answer["return_code"] == 0, answer
    return answer["data"]


def cluster_body(name, qp, kind="cluster_by_static_condition", project_id=None) -> dict:
    return {"projectId": project_id, "clusterName": name, "clusterCatalog": "catalog_cluster", "clusterType": kind,
            "displayName": name, "qp": qp}


def test_seed_cluster_through_every_cluster_endpoint(client, worker, td):
    cluster_id = add(client, td, seed_request("add_condition_cluster", td.id))
    status, answer = get(client, seed_url("/open/user-cluster-refresh-progress", td, cluster_id))
    assert status == 200 and set(answer) == set(SEED["answers"]["progress"])
    wait_done(client, td, cluster_id)
    status, by_id = get(client, seed_url("/open/user-cluster-detail", td, cluster_id))
    status_name, by_name = get(client, seed_url("/open/user-cluster-detail", td))
    assert status == status_name == 200 and by_id == by_name
    data = by_id["data"]
    assert set(data) == set(SEED["answers"]["detail"]["data"])
    assert data["usersNum"] == len(td.ref.members(SEED_NATIVE)) and data["progress"] == 100
    assert (data["id"], data["projectId"], data["clusterName"]) == (cluster_id, td.id, "recent_7_days_consume")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", data["refreshTime"])
    today = datetime.now(UTC).date()
    (seen,) = data["userClusterDef"]["events"]
    assert (seen["startTime"], seen["endTime"]) == (f"{today - timedelta(days=7)} 00:00:00",
                                                   f"{today - timedelta(days=1)} 00:00:00")
    assert data["userClusterDef"]["filts"] == seed_request("add_condition_cluster")["qp"]["filts"]
    status, answer = get(client, by_name_url("/open/user-cluster-refresh-progress-by-name", td))
    assert (status, answer) == (200, {"data": {"progress": 100}, **OK})

    # The seed's update bodies carry the resolved absolute times, which win over recentDay.
    absolute = {"op": "and", "children": [
        {**count("consume_item", "gt", 4), "window": {"start": "2020-01-03", "end": "2020-01-09"}}, SEED_CLUSTER]}
    assert post(client, seed_url("/open/user-cluster-update", td, cluster_id), seed_request("update", td.id)) == (200, OK)
    wait_done(client, td, cluster_id)
    assert detail(client, td, cluster_id)["usersNum"] == len(td.ref.members(absolute))
    renamed = {**seed_request("update_by_name", td.id), "displayName": "seven days"}
    assert post(client, by_name_url("/open/user-cluster-update-by-name", td), renamed) == (200, OK)
    wait_done(client, td, cluster_id)
    assert detail(client, td, cluster_id)["displayName"] == "seven days"

    assert post(client, seed_url("/open/user-cluster-refresh", td, cluster_id)) == (200, OK)
    wait_done(client, td, cluster_id)
    assert post(client, by_name_url("/open/user-cluster-refresh-by-name", td)) == (200, OK)
    wait_done(client, td, cluster_id)

    status, listed = post(client, f"/open/user-cluster-list?token={td.token}", seed_request("list", td.id))
    assert status == 200 and listed["data"] == {"pagerResult": {"pageNum": 1, "pageSize": 10, "totalNum": 0},
                                                "userClusters": []}
    status, listed = post(client, f"/open/user-cluster-list?token={td.token}",
                          {**seed_request("list", td.id), "clusterName": "RECENT_7"})
    (entry,) = listed["data"]["userClusters"]
    assert set(entry) == set(SEED["answers"]["list"]["data"]["userClusters"][0])
    assert (entry["id"], entry["displayName"], entry["progress"], entry["historyDataStatus"]) == (
        cluster_id, "seven days", 100, 1)
    assert listed["data"]["pagerResult"]["totalNum"] == 1

    assert post(client, by_name_url("/open/delete-user-cluster-by-name", td)) == (200, OK)
    status, answer = get(client, seed_url("/open/user-cluster-detail", td, cluster_id))
    assert status == 404 and answer["return_code"] == -1004


def test_cluster_counts_equal_the_native_rules(client, worker, td):
    names = ["SUM", "filters joined by or", "events or, then and with users", "notInclude"]
    ids = {name: add(client, td, cluster_body(f"counts{index}", CASES[name][0], project_id=td.id))
           for index, name in enumerate(names)}
    for name, cluster_id in ids.items():
        wait_done(client, td, cluster_id)
        assert detail(client, td, cluster_id)["usersNum"] == len(td.ref.members(CASES[name][1])), name
    for cluster_id in ids.values():
        url = f"/open/user-cluster-delete?token={td.token}&projectId={td.id}&clusterId={cluster_id}"
        assert post(client, url) == (200, OK)


def test_dynamic_clusters_refresh_daily_and_failures_show_minus_one(client, worker, td, pg):
    dynamic = add(client, td, cluster_body("daily", CASES["SUM"][0], "cluster_by_dynamic_condition", td.id))
    static = add(client, td, cluster_body("static", CASES["SUM"][0], project_id=td.id))
    # The project's daily refresh time is 05:30 (td): its dynamic clusters fire then, in its zone.
    assert schedules(pg, dynamic, static) == [(True, "30 5 * * *", True, True), (False, None, False, False)]
    for cluster_id, kind in ((static, "cluster_by_dynamic_condition"), (dynamic, "cluster_by_static_condition")):
        body = {**cluster_body("x", CASES["SUM"][0], kind, td.id), "clusterName": None}
        del body["clusterName"]
        url = f"/open/user-cluster-update?token={td.token}&clusterId={cluster_id}"
        assert post(client, url, body) == (200, OK)
    assert schedules(pg, static, dynamic) == [(True, "30 5 * * *", True, True), (False, None, False, False)]
    failing = add(client, td, cluster_body("failing", {"filts": [
        {"columnName": "no_such_column", "comparator": "equal", "ftv": ["1"], "tableType": "user"}]}, project_id=td.id))
    wait_done(client, td, failing, expect=-1)
    wait_done(client, td, dynamic)
    status, listed = post(client, f"/open/user-cluster-list?token={td.token}", {
        "projectId": td.id, "clusterCatalog": "catalog_cluster", "clusterTypes": ["cluster_by_dynamic_condition"],
        "pagerHeader": {"pageNum": 1, "pageSize": 1}})
    assert [c["id"] for c in listed["data"]["userClusters"]] == [static]
    # Catalog and type default when a body leaves them out, and the list sees the defaults.
    bare = {key: value for key, value in cluster_body("bare", CASES["SUM"][0], project_id=td.id).items()
            if key not in ("clusterCatalog", "clusterType")}
    bare_id = add(client, td, bare)
    status, listed = post(client, f"/open/user-cluster-list?token={td.token}", {
        "projectId": td.id, "clusterCatalog": "catalog_cluster", "clusterTypes": ["cluster_by_static_condition"],
        "clusterName": "bare"})
    assert [(c["id"], c["clusterCatalog"], c["clusterType"]) for c in listed["data"]["userClusters"]] == [
        (bare_id, "catalog_cluster", "cluster_by_static_condition")]
    status, listed = post(client, f"/open/user-cluster-list?token={td.token}", {
        "projectId": td.id, "pagerHeader": {"pageNum": 2, "pageSize": 1}})
    assert listed["data"]["pagerResult"]["totalNum"] >= 2 and len(listed["data"]["userClusters"]) == 1


def schedules(pg, *cluster_ids) -> list[tuple]:
    with pg.cursor() as cur:
        cur.execute("SELECT id, dynamic, cron, scheduler_running, daily_refresh FROM cohorts WHERE id = ANY(%s)",
                    (list(cluster_ids),))
        found = {row[0]: row[1:] for row in cur.fetchall()}
    pg.commit()
    return [found[cluster_id] for cluster_id in cluster_ids]


def cluster_rows(pg, project_id) -> int:
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM cohorts WHERE project_id = %s", (project_id,))
        (n,) = cur.fetchone()
    pg.commit()
    return n


@pytest.mark.parametrize("url, body, status, code, words", [
    ("/open/user-cluster-add", "seed", 401, -1008, "参数(token)为空"),
    ("/open/user-cluster-add?token=nobodys", "seed", 401, -1002, "invalid token"),
    ("/open/user-cluster-add?token={token}", {"projectId": 999999}, 403, -1003, "not the token's project"),
    ("/open/user-cluster-add?token={token}", {"clusterName": "no spaces"}, 400, -1001, "clusterName"),
    ("/open/user-cluster-add?token={token}", {"displayName": "x" * 51}, 400, -1001, "displayName"),
    ("/open/user-cluster-add?token={token}", {"qp": {"events": [{"eventName": "pay"}]}}, 400, -1001,
     "qp.events[0].taPropQuota"),
    ("/open/user-cluster-add?token={token}", {"clusterType": "cluster_by_static_sql"}, 400, -1006, "SQL"),
    ("/open/user-cluster-add?token={token}", {"clusterType": "cluster_by_result"}, 400, -1006, "result"),
    ("/open/user-cluster-add?token={token}", {"clusterType": "cluster_by_import"}, 400, -1006,
     "/open/import-id-cluster-add"),
    ("/open/user-cluster-add?token={token}", {"qp": None}, 400, -1001, "qp"),
    ("/open/user-cluster-detail?token={token}&projectId={id}&clusterId=2147483000", None, 404, -1004, "no cluster"),
    ("/open/user-cluster-detail?token={token}&projectId={id}&clusterId=abc", None, 400, -1001, "clusterId"),
    ("/open/user-cluster-detail?token={token}&projectId={id}", None, 400, -1001, "clusterId or clusterName"),
    ("/open/user-cluster-detail?token={token}&clusterId=1", None, 400, -1001, "projectId"),
    ("/open/user-cluster-refresh?token={token}&projectId={id}&clusterName=x", None, 400, -1001, "clusterId"),
    ("/open/user-cluster-delete?token={token}&projectId={id}&clusterId=2147483000", None, 404, -1004, "no cluster"),
    ("/open/user-cluster-list?token={token}", {"projectId": "{id}", "pagerHeader": {"pageSize": 0}}, 400, -1001,
     "pagerHeader.pageSize"),
])
def test_refusals_answer_a_code_and_write_nothing(client, td, pg, url, body, status, code, words):
    url = url.format(token=td.token, id=td.id)
    before = cluster_rows(pg, td.id)
    if body == "seed":
        body = seed_request("add_condition_cluster", td.id)
    elif isinstance(body, dict) and "user-cluster-add" in url:
        body = {**seed_request("add_condition_cluster", td.id), "clusterName": "refused", **body}
    elif isinstance(body, dict):
        body = {key: (td.id if value == "{id}" else value) for key, value in body.items()}
    response = client.get(url) if "detail" in url else client.post(url, json=body)
    answer = response.get_json()
    assert response.status_code == status and answer["return_code"] == code, answer
    assert set(answer) == {"return_code", "return_message"} and words in answer["return_message"]
    assert cluster_rows(pg, td.id) == before


def test_missing_token_answers_the_seed_body(client):
    response = client.get("/open/user-cluster-detail?projectId=1&clusterId=1")
    assert response.get_json() == SEED["answers"]["error"]


def test_names_are_unique_and_projects_confined(client, worker, td, api_project, service_settings, celery_app):
    cluster_id = add(client, td, cluster_body("mine", CASES["SUM"][0], project_id=td.id))
    status, answer = post(client, f"/open/user-cluster-add?token={td.token}",
                          cluster_body("mine", CASES["SUM"][0], project_id=td.id))
    assert (status, answer["return_code"]) == (409, -1005)
    other_id, other_headers = api_project[1], api_project[2]
    other_token = other_headers["Authorization"].split()[1]
    for url in (f"/open/user-cluster-detail?token={other_token}&projectId={other_id}&clusterId={cluster_id}",
                f"/open/user-cluster-detail?token={other_token}&projectId={other_id}&clusterName=mine"):
        status, answer = get(client, url)
        assert (status, answer["return_code"]) == (404, -1004)
    status, answer = post(client, f"/open/user-cluster-delete?token={other_token}&projectId={td.id}"
                                  f"&clusterId={cluster_id}")
    assert (status, answer["return_code"]) == (403, -1003)
    assert detail(client, td, cluster_id)["clusterName"] == "mine"

    # A deployment whose clients' HTTP library throws on 4xx answers every error 200 (the body still says).
    from app import create_app

    settings = dataclasses.replace(service_settings, thinkingdata_error_status=200)
    forced = create_app({"TESTING": True, "SETTINGS": settings, "CELERY": celery_app}).test_client()
    response = forced.get(f"/open/user-cluster-detail?token={td.token}&projectId={td.id}&clusterId=2147483000")
    assert response.status_code == 200 and response.get_json()["return_code"] == -1004


# -- ID uploads ---------------------------------------------------------------------------------------


def upload(client, url, lines) -> tuple[int, dict]:
    response = client.post(url, data="\n".join(lines) + "\n", content_type="text/csv")
    return response.status_code, response.get_json()


def seed_import_url(td, path="/open/import-id-cluster-add", **params) -> str:
    """The seed's curl URL of path (mainColumnName=%23account_id), with this test's token and project."""
    params = {"token": td.token, "projectId": td.id, "displayName": "xxxx", "mainColumnName": "#account_id", **params}
    return path + "?" + "&".join(f"{key}={quote(str(value))}" for key, value in params.items())


def test_id_uploads_match_on_a_property_or_the_user_key(client, worker, td):
    # The seed's file as written: none of its IDs is an account id of the sample data.
    status, answer = upload(client, seed_import_url(td), SEED["csv"])
    assert status == 200 and set(answer) == set(SEED["answers"]["import_add"])
    data = answer["data"]
    assert set(data) == set(SEED["answers"]["import_add"]["data"])
    assert (data["uploadNum"], data["userNum"], data["unmatchedNum"], data["tagValueNullNum"]) == (5, 0, 5, 0)
    cluster_id = data["clusterId"]
    wait_done(client, td, cluster_id, expect=-1)  # a file that matches nobody fails its version (import_no_match)

    accounts = sorted({p["#account_id"] for p in td.ref.data.profiles if p.get("#account_id")})[:6]
    lines = [*accounts, accounts[0], "acc_nobody"]
    url = seed_import_url(td, "/open/import-id-cluster-modify", clusterId=cluster_id, remarks="six")
    status, answer = upload(client, url, lines)
    native = profile("#account_id", "eq", *accounts)
    assert status == 200 and answer["data"] == {"clusterId": cluster_id, "tagValueNullNum": 0, "unmatchedNum": 1,
                                                "uploadNum": len(lines), "userNum": len(td.ref.members(native))}
    wait_done(client, td, cluster_id)
    seen = detail(client, td, cluster_id)
    assert (seen["usersNum"], seen["clusterType"]) == (len(td.ref.members(native)), "cluster_by_import")

    keys = sorted(p["key"] for p in td.ref.data.profiles)[:4]
    status, listed = post(client, f"/open/user-cluster-list?token={td.token}", {
        "projectId": td.id, "clusterTypes": ["cluster_by_import"]})
    (entry,) = [c for c in listed["data"]["userClusters"] if c["id"] == cluster_id]
    assert (entry["mainColumnName"], entry["remarks"], entry["usersNum"]) == ("#account_id", "six", len(accounts))
    url = (f"/open/import-id-cluster-modify-by-name?token={td.token}&projectId={td.id}"
           f"&clusterName=%20{entry['clusterName']}&mainColumnName=%23distinct_id")
    status, answer = upload(client, url, keys)
    assert status == 200 and (answer["data"]["userNum"], answer["data"]["unmatchedNum"]) == (4, 0), answer
    wait_done(client, td, cluster_id)
    assert detail(client, td, cluster_id)["usersNum"] == 4
    status, answer = post(client, f"/open/user-cluster-refresh?token={td.token}&projectId={td.id}"
                                  f"&clusterId={cluster_id}")
    assert (status, answer["return_code"]) == (409, -1007)


@pytest.mark.parametrize("params, lines, status, code, words", [
    ({"clusterCatalog": "catalog_tag"}, ["a"], 400, -1001, "line 1: expected 2 fields"),
    ({"clusterCatalog": "catalog_tag", "selectType": "date"}, ["a,1"], 400, -1001, "selectType"),
    ({"selectType": "number"}, ["a"], 400, -1001, "selectType"),
    ({"displayName": ""}, ["a"], 400, -1001, "displayName"),
    ({"mainColumnName": "no_such_column"}, ["a"], 400, -1001, "no_such_column"),
    ({"clusterName": "bad name"}, ["a"], 400, -1001, "clusterName"),
    ({}, [], 400, -1001, "no IDs"),
])
def test_bad_uploads_are_refused_and_write_nothing(client, td, pg, params, lines, status, code, words):
    before = cluster_rows(pg, td.id)
    url = seed_import_url(td, **params)
    got, answer = upload(client, url, lines)
    assert (got, answer["return_code"]) == (status, code) and words in answer["return_message"], answer
    assert cluster_rows(pg, td.id) == before


def expected_tag_upload(rows: list[tuple[str, str]], users_of: dict) -> tuple[dict, dict]:
    """(the answer's counts, {user key: value}) of `id,value` rows, worked out here: the last value of an ID wins,
    an empty one gives no value; users_of maps an ID to the users it matches."""
    last = dict(rows)
    values = {user: value for key, value in last.items() if value for user in users_of.get(key, ())}
    counts = {"uploadNum": len(rows), "tagValueNullNum": sum(1 for _, value in rows if not value),
              "unmatchedNum": sum(1 for key in last if not users_of.get(key)),
              "userNum": len({user for key in last for user in users_of.get(key, ())})}
    return counts, values


def native_values(client, td, tag_id) -> dict:
    page = client.get(f"/api/v1/tags/{tag_id}/values", query_string={"format": "json", "per_page": 1000},
                      headers={"Authorization": f"Bearer {td.token}"}).get_json()
    return {row["key"]: row["value"] for row in page["values"]}


def test_id_upload_tags_take_id_value_rows(client, worker, td, pg):
    by_account = {}
    for p in td.ref.data.profiles:
        if p.get("#account_id"):
            by_account.setdefault(p["#account_id"], []).append(p["key"])
    a = sorted(by_account)[:5]
    # a[0] twice (the last value wins), a[1] empty, a[4] empty then valued, an ID matching nobody.
    rows = [(a[0], "gold"), (a[1], ""), (a[2], "silver"), (a[0], "platinum"), ("acc_nobody", "bronze"),
            (a[3], "gold"), (a[4], ""), (a[4], "late")]
    counts, values = expected_tag_upload(rows, by_account)
    assert counts["tagValueNullNum"] == 2 and counts["unmatchedNum"] == 1 and len(values) == 4
    url = seed_import_url(td, clusterCatalog="catalog_tag", clusterName="tier_upload", remarks="tiers")
    status, answer = upload(client, url, ["#account_id,tag_value", *(f"{key},{value}" for key, value in rows)])
    assert status == 200 and answer["return_code"] == 0, answer
    tag_id = answer["data"].pop("clusterId")
    assert answer["data"] == counts
    wait_done(client, td, tag_id)
    seen = detail(client, td, tag_id)
    assert (seen["clusterType"], seen["usersNum"]) == ("tag_by_import", len(values))  # users with a value
    assert native_values(client, td, tag_id) == values
    status, listed = post(client, f"/open/user-cluster-list?token={td.token}", {
        "projectId": td.id, "clusterTypes": ["tag_by_import"]})
    (entry,) = listed["data"]["userClusters"]
    assert (entry["id"], entry["clusterCatalog"], entry["selectType"], entry["mainColumnName"], entry["remarks"]) == (
        tag_id, "catalog_tag", "string", "#account_id", "tiers")

    # A new version on the user key with numbers (selectType, kept by the next modify).
    keys = sorted(p["key"] for p in td.ref.data.profiles)[:3]
    rows = [(keys[0], "3.5"), (keys[1], "-2"), (keys[2], ""), ("nobody", "1")]
    counts, texts = expected_tag_upload(rows, {key: [key] for key in keys})
    values = {key: float(text) for key, text in texts.items()}
    url = seed_import_url(td, "/open/import-id-cluster-modify", clusterId=tag_id, mainColumnName="#distinct_id",
                          selectType="number")
    status, answer = upload(client, url, [f"{key},{value}" for key, value in rows])
    assert status == 200 and answer["data"] == {"clusterId": tag_id, **counts}, answer
    wait_done(client, td, tag_id)
    assert native_values(client, td, tag_id) == values == {keys[0]: 3.5, keys[1]: -2}
    by_name = (f"/open/import-id-cluster-modify-by-name?token={td.token}&projectId={td.id}"
               f"&clusterName=%20tier_upload")
    before = cluster_rows(pg, td.id)
    status, answer = upload(client, by_name, [f"{keys[0]},lots"])  # still a number tag
    assert (status, answer["return_code"]) == (400, -1001) and "line 1" in answer["return_message"], answer
    status, answer = upload(client, by_name + "&clusterCatalog=catalog_cluster", [keys[0]])
    assert (status, answer["return_code"]) == (409, -1007), answer
    assert cluster_rows(pg, td.id) == before and native_values(client, td, tag_id) == values
    status, answer = post(client, f"/open/user-cluster-refresh?token={td.token}&projectId={td.id}&clusterId={tag_id}")
    assert (status, answer["return_code"]) == (409, -1007)
    assert post(client, f"/open/user-cluster-delete?token={td.token}&projectId={td.id}&clusterId={tag_id}") == (200, OK)


def test_condition_clusters_are_not_modified_by_upload(client, worker, td):
    cluster_id = add(client, td, cluster_body("notupload", CASES["SUM"][0], project_id=td.id))
    status, answer = upload(client, seed_import_url(td, "/open/import-id-cluster-modify", clusterId=cluster_id),
                            SEED["csv"])
    assert (status, answer["return_code"]) == (409, -1007)


def test_the_openapi_examples_are_accepted(client, worker, td):
    spec = client.get("/openapi.json").get_json()
    examples = {path: next(iter(op["requestBody"]["content"].values()))["example"]
                for path, ops in spec["paths"].items() if path.startswith("/open/")
                for op in ops.values() if "requestBody" in op}
    assert set(examples) == {"/open/user-cluster-add", "/open/user-cluster-update", "/open/user-cluster-update-by-name",
                             "/open/user-cluster-list", "/open/import-id-cluster-add", "/open/import-id-cluster-modify",
                             "/open/import-id-cluster-modify-by-name"}
    mine = {"projectId": td.id}
    cluster_id = add(client, td, {**examples["/open/user-cluster-add"], **mine, "clusterName": "example"})
    assert post(client, f"/open/user-cluster-update?token={td.token}&clusterId={cluster_id}",
                {**examples["/open/user-cluster-update"], **mine}) == (200, OK)
    assert post(client, f"/open/user-cluster-update-by-name?token={td.token}&projectId={td.id}&clusterName=example",
                {**examples["/open/user-cluster-update-by-name"], **mine}) == (200, OK)
    status, listed = post(client, f"/open/user-cluster-list?token={td.token}", {**examples["/open/user-cluster-list"],
                                                                               **mine})
    assert status == 200 and listed["return_code"] == 0
    lines = examples["/open/import-id-cluster-add"].splitlines()
    status, answer = upload(client, seed_import_url(td), lines)
    assert status == 200 and answer["data"]["userNum"] == len(lines)
    wait_done(client, td, cluster_id)


# -- tags -----------------------------------------------------------------------------------------------


def tag_values(td, definition: dict) -> dict:
    """{user key: value} of a hand-written tag definition, from the reference."""
    parsed = parse_tag_definition(definition)
    if parsed["kind"] == "first_last":
        parsed["type"] = "number"  # #vp@test_num, as the service types it from the stored column
    return td.ref.tag_values(parsed)[1]


def android(tag_qp: dict, key: str, recent: str = "0-30") -> dict:
    """A seed tag's tagQp with the sample data's spelling of Android and a month of data."""
    tag_qp = copy.deepcopy(tag_qp)
    (inner,) = tag_qp[key].values()
    inner["filts"][0]["ftv"], inner["recentDay"] = ["Android"], recent
    return tag_qp


def test_seed_tags_compute_as_written_and_as_the_native_tags(client, worker, td, pg):
    month = {"last": 31, "offset": 0, "unit": "day"}
    os_filter = {"property": "#os", "cmp": "eq", "values": ["Android"]}
    seed_kinds = {
        "add_condition_tag": {"kind": "values", "values": [
            {"value": "标签值1", "definition": count("player_register", "gt", 4, last=30, offset=1)},
            {"value": "标签值2", "definition": count("fight_success", "gt", 0, last=30, offset=1)}]},
        "add_first_last_tag": {"kind": "first_last", "which": "first", "event": "pay", "property": "#vp@test_num",
                               "window": {"last": 2}, "filter": {**os_filter, "values": ["android"]}},
        "add_metric_tag": {"kind": "metric", "event": "activity_attend", "window": {"last": 2},
                           "filter": {**os_filter, "values": ["android"]},
                           "agg": {"fn": "count_distinct", "property": "activity_reward"}},
    }
    ids = {name: add(client, td, seed_request(name, td.id)) for name in ("add_condition_tag", "add_first_last_tag")}
    # The seed's first/last and metric examples share one clusterName: the second waits for the first.
    status, answer = post(client, f"/open/user-cluster-add?token={td.token}", seed_request("add_metric_tag", td.id))
    assert (status, answer["return_code"]) == (409, -1005)
    wait_done(client, td, ids["add_first_last_tag"])
    first_last_users = detail(client, td, ids["add_first_last_tag"])["usersNum"]
    assert first_last_users == len(tag_values(td, seed_kinds["add_first_last_tag"]))
    url = f"/open/delete-user-cluster-by-name?token={td.token}&projectId={td.id}&clusterName=tag_test_20200615_1"
    assert post(client, url) == (200, OK)
    del ids["add_first_last_tag"]
    ids["add_metric_tag"] = add(client, td, seed_request("add_metric_tag", td.id))
    # The same kinds on the sample data's spelling (Android) over a month, so that values differ.
    first = seed_request("add_first_last_tag", td.id)
    first.update(clusterName="first_pay_vp", tagQp=android(first["tagQp"], "userTagConFirstLastEventDef"))
    metric = seed_request("add_metric_tag", td.id)
    metric.update(clusterName="rewards_month", tagQp=android(metric["tagQp"], "userTagConQuotaDef"))
    ids["first_pay_vp"], ids["rewards_month"] = add(client, td, first), add(client, td, metric)
    natives = {**seed_kinds,
               "first_pay_vp": {**seed_kinds["add_first_last_tag"], "window": month, "filter": os_filter},
               "rewards_month": {**seed_kinds["add_metric_tag"], "window": month, "filter": os_filter}}
    for name, tag_id in ids.items():
        wait_done(client, td, tag_id)
        seen = detail(client, td, tag_id)
        expected = tag_values(td, natives[name])
        assert seen["usersNum"] == len(expected), name
        sent = {"first_pay_vp": first, "rewards_month": metric}.get(name) or seed_request(name)
        assert "userClusterDef" not in seen and seen["userTagDef"] == sent["tagQp"]
    assert len(set(tag_values(td, natives["rewards_month"]).values())) > 2
    assert tag_values(td, natives["first_pay_vp"])

    status, listed = post(client, f"/open/user-cluster-list?token={td.token}", {
        "projectId": td.id, "clusterCatalog": "catalog_tag", "pagerHeader": {"pageSize": 100}})
    by_id = {c["id"]: c for c in listed["data"]["userClusters"]}
    assert set(ids.values()) <= set(by_id) and all(c["clusterCatalog"] == "catalog_tag" for c in by_id.values())
    assert (by_id[ids["add_condition_tag"]]["selectType"], by_id[ids["rewards_month"]]["selectType"]) == (
        "string", "number")
    tag_id = ids["add_condition_tag"]
    assert post(client, f"/open/user-cluster-refresh?token={td.token}&projectId={td.id}&clusterId={tag_id}") == (200, OK)
    wait_done(client, td, tag_id)
    changed = {**seed_request("add_condition_tag", td.id), "clusterType": "tag_by_dynamic_condition"}
    del changed["clusterName"]
    changed["tagQp"]["userTagValueDefs"] = changed["tagQp"]["userTagValueDefs"][1:]
    assert post(client, f"/open/user-cluster-update?token={td.token}&clusterId={tag_id}", changed) == (200, OK)
    wait_done(client, td, tag_id)
    only_second = {"kind": "values", "values": seed_kinds["add_condition_tag"]["values"][1:]}
    assert detail(client, td, tag_id)["usersNum"] == len(tag_values(td, only_second))
    assert schedules(pg, tag_id) == [(True, "30 5 * * *", True, True)]
    status, answer = post(client, f"/open/user-cluster-update?token={td.token}&clusterId={tag_id}",
                          {**changed, "clusterCatalog": "catalog_cluster", "clusterType": "cluster_by_static_condition",
                           "qp": CASES["SUM"][0]})
    assert (status, answer["return_code"]) == (409, -1007)
    for tag_id in ids.values():
        assert post(client, f"/open/user-cluster-delete?token={td.token}&projectId={td.id}&clusterId={tag_id}") == (
            200, OK)
