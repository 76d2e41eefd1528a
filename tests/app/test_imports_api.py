"""ID-import cohorts end to end: upload -> PostgreSQL upload row and job -> real worker -> members."""

from __future__ import annotations

import io
import os
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohort_engine import db
from cohort_engine.project import ProjectEngine
from core.data import sugo_targets
from tests.app.test_cohorts_api import poll_job
from tests.servers import ServedFile

# Users with their #account_id (u5 shares u1's account; u4 has none).
ACCOUNTS = {"u1": "A1", "u2": "A2", "u3": "A3", "u4": None, "u5": "A1", "u6": "A6"}


@pytest.fixture
def loaded(api_project, service_settings, tmp_path):
    name, project_id, headers = api_project
    pq.write_table(pa.table({"distinct_id": list(ACCOUNTS), "#account_id": list(ACCOUNTS.values())}),
                   tmp_path / "u.parquet")
    ProjectEngine(service_settings.engine, name).ingest_users(tmp_path / "u.parquet")
    return name, project_id, headers


def members(client, headers, cohort_id) -> set[str]:
    return set(client.get(f"/api/v1/cohorts/{cohort_id}/members", headers=headers).get_data(as_text=True).split())


def table_count(pg, table: str, project_id: int) -> int:
    with pg.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table} WHERE project_id = %s", (project_id,))
        count = cur.fetchone()[0]
    pg.commit()
    return count


def upload(client, headers, body: bytes, path="/api/v1/cohorts/import", **query):
    query.setdefault("name", "imported")
    if path != "/api/v1/cohorts/import":
        query.pop("name")
    return client.post(path, query_string=query, data=body, headers={**headers, "Content-Type": "text/csv"})


def expected_counts(lines: list[str], header: bool, match_on) -> dict:
    """Counts computed here, independently of the service: rows, distinct, duplicates, matched users."""
    ids = [line.strip() for line in lines if line.strip()][1 if header else 0:]
    distinct = set(ids)
    users = {u for u in ACCOUNTS if match_on(u) in distinct}
    matched = {i for i in distinct if any(match_on(u) == i for u in ACCOUNTS)}
    return {"rows": len(ids), "distinct": len(distinct), "duplicates": len(ids) - len(distinct),
            "matched_ids": len(matched), "unmatched_ids": len(distinct - matched), "users": len(users)}, users


def test_upload_on_the_user_key_with_bom_crlf_duplicates_and_header(client, worker, loaded):
    _, _, headers = loaded
    lines = ["user_key", "u1", "", "u2", "u1", "nobody", "u6", ""]
    body = b"\xef\xbb\xbf" + "\r\n".join(lines).encode()
    response = upload(client, headers, body)
    assert response.status_code == 202, response.get_json()
    answer = response.get_json()
    counts, users = expected_counts(lines, True, lambda u: u)
    assert {k: answer["counts"][k] for k in counts} == counts
    job, _ = poll_job(client, headers, answer["job"]["id"])
    assert job["status"] == "succeed", job
    assert job["result"]["imports"][0]["users"] == len(users)
    assert members(client, headers, answer["cohort"]["id"]) == users
    assert answer["cohort"]["definition"]["type"] == "import"


def test_upload_on_a_profile_property_as_multipart(client, worker, loaded):
    _, _, headers = loaded
    lines = ["#account_id", "A1", "A3", "A9", "A3"]
    response = client.post("/api/v1/cohorts/import", query_string={"name": "by_account", "match": "#account_id"},
                           data={"file": (io.BytesIO("\n".join(lines).encode()), "ids.csv")}, headers=headers,
                           content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    answer = response.get_json()
    counts, users = expected_counts(lines, True, ACCOUNTS.get)
    assert {k: answer["counts"][k] for k in counts} == counts
    job, _ = poll_job(client, headers, answer["job"]["id"])
    assert job["status"] == "succeed", job
    assert members(client, headers, answer["cohort"]["id"]) == users == {"u1", "u5", "u3"}


def test_keep_unmatched_as_new_users(client, worker, loaded, service_settings):
    name, _, headers = loaded
    response = upload(client, headers, b"u2\nfresh1\nfresh2\n", keep_unmatched="true")
    answer = response.get_json()
    assert response.status_code == 202, answer
    assert answer["counts"]["kept_as_new_users"] == 2 and answer["counts"]["users"] == 3
    job, _ = poll_job(client, headers, answer["job"]["id"])
    assert job["status"] == "succeed", job
    assert members(client, headers, answer["cohort"]["id"]) == {"u2", "fresh1", "fresh2"}
    assert ProjectEngine(service_settings.engine, name).lookup("fresh1") is not None
    refused = upload(client, headers, b"A1\n", name="both", keep_unmatched="true", match="#account_id")
    assert refused.status_code == 400 and "keep_unmatched" in refused.get_json()["errors"]


def test_replace_makes_a_new_version_and_refresh_reuses_the_stored_file(client, worker, loaded, pg):
    _, project_id, headers = loaded
    first = upload(client, headers, b"u1\nu2\n").get_json()
    cohort_id = first["cohort"]["id"]
    assert poll_job(client, headers, first["job"]["id"])[0]["status"] == "succeed"
    replaced = client.put(f"/api/v1/cohorts/{cohort_id}/import", data=b"u3\nu4\nu5\n",
                          headers={**headers, "Content-Type": "text/csv"})
    assert replaced.status_code == 202, replaced.get_json()
    second = replaced.get_json()
    job, _ = poll_job(client, headers, second["job"]["id"])
    assert job["status"] == "succeed", job
    assert members(client, headers, cohort_id) == {"u3", "u4", "u5"}
    with pg.cursor() as cur:
        cur.execute("SELECT definition_version, count FROM cohort_versions WHERE cohort_id = %s ORDER BY id",
                    (cohort_id,))
        assert cur.fetchall() == [(1, 2), (2, 3)]
    pg.commit()
    # The replaced file is no longer referenced: it is gone; the new one stays.
    assert table_count(pg, "uploads", project_id) == 1
    refresh = client.post(f"/api/v1/cohorts/{cohort_id}/refresh", headers=headers).get_json()
    job, _ = poll_job(client, headers, refresh["job"]["id"])
    assert job["status"] == "succeed" and job["result"]["count"] == 3


def test_nothing_matched_fails_the_job_with_a_clear_code(client, worker, loaded):
    _, _, headers = loaded
    answer = upload(client, headers, b"x1\nx2\n").get_json()
    assert answer["counts"]["matched_ids"] == 0 and answer["counts"]["unmatched_ids"] == 2
    job, _ = poll_job(client, headers, answer["job"]["id"])
    assert job["status"] == "failed" and job["error_code"] == "import_no_match", job
    assert "none of the 2 imported IDs" in job["error_message"]


def test_garbage_is_refused_with_line_numbers_and_nothing_is_written(client, loaded, pg):
    _, project_id, headers = loaded
    before = (table_count(pg, "uploads", project_id), table_count(pg, "cohorts", project_id))
    garbage = b"u1\na,b\n\"unclosed\n" + os.urandom(2000).replace(b"\n", b"") + b"\n"
    response = upload(client, headers, b"u0\n\xff\xfe\x00\n" + garbage)
    assert response.status_code == 400
    messages = response.get_json()["errors"]["file"]
    assert messages[0].startswith("line 2: ") and any(m.startswith("line 4: expected 1 field") for m in messages)
    assert (table_count(pg, "uploads", project_id), table_count(pg, "cohorts", project_id)) == before
    assert upload(client, headers, b"u1\n", match="#nope").status_code == 400
    assert (table_count(pg, "uploads", project_id), table_count(pg, "cohorts", project_id)) == before


def test_upload_limits_and_content_types(client, loaded, app, service_settings, celery_app, pg):
    _, project_id, headers = loaded
    from app import create_app

    small = create_app({"TESTING": True, "SETTINGS": replace(service_settings, import_max_bytes=100),
                        "CELERY": celery_app}).test_client()
    before = table_count(pg, "uploads", project_id)
    too_big = small.post("/api/v1/uploads", data=b"u1\n" * 40, headers={**headers, "Content-Type": "text/csv"})
    assert too_big.status_code == 413 and "COHORTS_IMPORT_MAX_BYTES" in too_big.get_json()["error"]
    assert table_count(pg, "uploads", project_id) == before
    wrong = client.post("/api/v1/uploads", json={"ids": ["u1"]}, headers=headers)
    assert wrong.status_code == 415
    # Larger than the app's JSON body limit, within the import limit: streamed, accepted.
    big = b"".join(b"k%07d\n" % i for i in range(app.config["SETTINGS"].max_body_bytes // 9 + 10))
    stored = client.post("/api/v1/uploads", data=big, headers={**headers, "Content-Type": "text/csv"})
    assert stored.status_code == 201, stored.get_json()
    assert stored.get_json()["upload"]["rows"] == big.count(b"\n")


# -- sources and Sensors rule types 5 and 6 ---------------------------------------------------------


@pytest.fixture
def served():
    server = ServedFile()
    yield server
    server.close()


def sensors_rule(client, headers, body):
    token = headers["Authorization"].split()[1]
    return client.post("/segmenter/rule", query_string={"token": token}, json=body)


def sensors_status(client, headers, rule_id, base_times):
    token = headers["Authorization"].split()[1]
    return client.post("/segmenter/status", query_string={"token": token},
                       json=[{"id": rule_id, "base_time_list": base_times}]).get_json()[0]["result"]


def sensors_execute(client, headers, rule_id, base_times):
    token = headers["Authorization"].split()[1]
    return client.post("/segmenter/execute", query_string={"token": token},
                       json=[{"id": rule_id, "base_time_list": base_times}])


def wait_partitions(client, headers, rule_id, base_times):
    from tests.services import wait_until

    return wait_until(lambda: (lambda r: r if all(p["status"] in ("succeed", "failed") for p in r) else None)(
        sensors_status(client, headers, rule_id, base_times)), timeout=30, interval=0.05, what="partitions")


def test_sensors_type_5_computes_an_uploaded_file(client, worker, loaded):
    _, _, headers = loaded
    stored = client.post("/api/v1/uploads", data=b"u2\nu3\nzz\n", headers={**headers, "Content-Type": "text/csv"})
    upload_id = stored.get_json()["upload"]["id"]
    saved = sensors_rule(client, headers, {"id": 0, "name": "vip_once", "cname": "VIP", "type": 5,
                                           "import": {"upload_id": upload_id}})
    assert saved.status_code == 200, saved.get_json()
    rule_id, base_time = saved.get_json()["id"], saved.get_json()["base_time"]
    partition, = wait_partitions(client, headers, rule_id, [base_time])
    assert partition["status"] == "succeed" and partition["count"] == 2
    assert members(client, headers, rule_id) == {"u2", "u3"}
    other = sensors_rule(client, headers, {"id": 0, "name": "vip_bad", "cname": "VIP", "type": 5,
                                           "import": {"upload_id": upload_id + 10_000}})
    assert other.status_code == 400 and "import.upload_id" in other.get_json()["errors"]


def test_sensors_type_6_rereads_an_allowed_url_on_each_compute(client, worker, loaded, served, pg):
    _, project_id, headers = loaded
    sugo_targets.add(pg, project_id, "import", served.host, served.port)
    pg.commit()
    served.body = b"#account_id\r\nA1\r\nA2\r\n"
    saved = sensors_rule(client, headers, {
        "id": 0, "name": "vip_daily", "cname": "VIP", "type": 6, "scheduler": {"running": True, "cron": "0 0 1 * * ?"},
        "import": {"url": served.url(), "match": "#account_id"}})
    assert saved.status_code == 200, saved.get_json()
    rule_id = saved.get_json()["id"]
    assert saved.get_json()["base_time"] is not None  # scheduled on its cron
    assert served.requests == []  # checked at save without being contacted
    assert sensors_execute(client, headers, rule_id, ["2024-03-01 01:00:00"]).status_code == 200
    first, = wait_partitions(client, headers, rule_id, ["2024-03-01 01:00:00"])
    assert first["status"] == "succeed" and first["count"] == len({"u1", "u5", "u2"})
    served.body = b"A6\n"
    assert sensors_execute(client, headers, rule_id, ["2024-03-02 01:00:00"]).status_code == 200
    second, = wait_partitions(client, headers, rule_id, ["2024-03-02 01:00:00"])
    assert second["status"] == "succeed" and second["count"] == 1
    assert len(served.requests) == 2
    served.status = 404
    assert sensors_execute(client, headers, rule_id, ["2024-03-03 01:00:00"]).status_code == 200
    third, = wait_partitions(client, headers, rule_id, ["2024-03-03 01:00:00"])
    assert third["status"] == "failed" and "HTTP 404" in third["error_message"]


def test_sensors_type_6_reads_a_file_under_the_import_dir(client, worker, loaded, service_settings):
    _, _, headers = loaded
    folder = os.path.join(service_settings.import_dir, "daily")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vip.csv"), "wb") as f:
        f.write(b"u1\r\nu4\r\nu4\r\n")
    saved = sensors_rule(client, headers, {
        "id": 0, "name": "vip_file", "cname": "VIP", "type": 6, "scheduler": {"running": False, "cron": "0 0 1 * * ?"},
        "import": {"path": "daily/vip.csv"}})
    assert saved.status_code == 200, saved.get_json()
    rule_id = saved.get_json()["id"]
    assert sensors_execute(client, headers, rule_id, ["2024-03-01 01:00:00"]).status_code == 200
    partition, = wait_partitions(client, headers, rule_id, ["2024-03-01 01:00:00"])
    assert partition["status"] == "succeed" and partition["count"] == 2


def test_sources_are_confined_before_anything_is_contacted(client, loaded, served, service_settings, tmp_path, pg):
    _, project_id, headers = loaded
    outside = tmp_path / "secret.csv"
    outside.write_bytes(b"u1\n")
    link = os.path.join(service_settings.import_dir, f"link-{project_id}.csv")
    os.symlink(outside, link)
    before = table_count(pg, "cohorts", project_id)
    for source, field in [({"path": "../secret.csv"}, "definition.source.path"),
                          ({"path": str(outside)}, "definition.source.path"),
                          ({"path": os.path.basename(link)}, "definition.source.path"),
                          ({"path": "0" * 300}, "definition.source.path"),  # too long a name: once a 500
                          ({"path": "a/" + "0" * 250 + "/" + "1" * 250}, "definition.source.path"),
                          ({"url": served.url()}, "definition.source.url"),  # not allowed for this project
                          ({"url": "file:///etc/passwd"}, "definition.source.url")]:
        response = client.post("/api/v1/cohorts", headers=headers, json={
            "name": "escape", "definition": {"type": "import", "source": source}})
        assert response.status_code == 400, (source, response.get_json())
        assert field in response.get_json()["errors"], response.get_json()
    sugo_targets.add(pg, project_id, "import", served.host, served.port)
    pg.commit()
    unknown = client.post("/api/v1/cohorts", headers=headers, json={"name": "escape", "definition": {
        "type": "import", "source": {"url": served.url()}, "match": "#nope"}})
    assert unknown.status_code == 400 and "definition.match" in unknown.get_json()["errors"]
    rule = sensors_rule(client, headers, {"id": 0, "name": "vip_nope", "cname": "VIP", "type": 6,
                                          "scheduler": {"running": False, "cron": "0 0 1 * * ?"},
                                          "import": {"url": served.url(), "match": "#nope"}})
    assert rule.status_code == 400 and "import.match" in rule.get_json()["errors"], rule.get_json()
    assert served.requests == []
    assert table_count(pg, "cohorts", project_id) == before
    sugo_targets.remove_all(pg, project_id)
    pg.commit()
    with db.connection(service_settings.engine.database_url) as conn:
        assert sugo_targets.for_project(conn, project_id) == []


# -- import tags ------------------------------------------------------------------------------------


def tag_values(client, headers, tag_id) -> dict:
    page = client.get(f"/api/v1/tags/{tag_id}/values", query_string={"format": "json", "per_page": 100},
                      headers=headers).get_json()
    return {row["key"]: row["value"] for row in page["values"]}


def test_import_tag_on_a_profile_property_then_replaced(client, worker, loaded):
    _, _, headers = loaded
    text = "#account_id,value\r\nA1,gold\r\nA2,\r\nA3,silver\r\nA1,platinum\r\nA9,bronze\r\n"
    response = client.post("/api/v1/tags/import", query_string={"name": "tier", "type": "string",
                                                                "match": "#account_id"},
                           data=text.encode(), headers={**headers, "Content-Type": "text/csv"})
    assert response.status_code == 202, response.get_json()
    answer = response.get_json()
    rows = [line.split(",") for line in text.split("\r\n")[1:] if line]
    last = dict(rows)  # the last value of each ID wins
    expected = {user: last[account] for user, account in ACCOUNTS.items() if last.get(account)}
    assert answer["counts"]["rows"] == len(rows) and answer["counts"]["duplicates"] == 1
    assert answer["counts"]["empty_values"] == sum(1 for _, v in rows if not v)
    assert answer["counts"]["unmatched_ids"] == 1  # A9
    job, _ = poll_job(client, headers, answer["job"]["id"])
    assert job["status"] == "succeed", job
    tag_id = answer["tag"]["id"]
    assert tag_values(client, headers, tag_id) == expected == {"u1": "platinum", "u5": "platinum", "u3": "silver"}
    replaced = client.put(f"/api/v1/tags/{tag_id}/import", data=b"u2,bronze\nu6,gold\n",
                          headers={**headers, "Content-Type": "text/csv"})
    assert replaced.status_code == 202, replaced.get_json()
    job, _ = poll_job(client, headers, replaced.get_json()["job"]["id"])
    assert job["status"] == "succeed", job
    assert tag_values(client, headers, tag_id) == {"u2": "bronze", "u6": "gold"}


def test_import_tag_values_must_fit_the_type(client, worker, loaded, pg):
    _, project_id, headers = loaded
    before = table_count(pg, "uploads", project_id)
    bad = client.post("/api/v1/tags/import", query_string={"name": "score", "type": "number"},
                      data=b"u1,3.5\nu2,lots\nu3,\nu4,1e400\n", headers={**headers, "Content-Type": "text/csv"})
    assert bad.status_code == 400
    assert [m.split(":")[0] for m in bad.get_json()["errors"]["file"]] == ["line 2", "line 4"]
    assert table_count(pg, "uploads", project_id) == before
    good = client.post("/api/v1/tags/import", query_string={"name": "score", "type": "number"},
                       data=b"u1,3.5\nu2,-2\nu3,\n", headers={**headers, "Content-Type": "text/csv"}).get_json()
    job, _ = poll_job(client, headers, good["job"]["id"])
    assert job["status"] == "succeed", job
    assert tag_values(client, headers, good["tag"]["id"]) == {"u1": 3.5, "u2": -2}
