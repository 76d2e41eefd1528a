"""The dialect seam: a dialect living only in tests/dialects/throwaway/, enabled by settings alone."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq

from cohort_engine.project import ProjectEngine
from tests.services import wait_until

LEVEL_5 = {"type": "profile", "property": "level", "cmp": "eq", "values": [5]}


def test_a_dialect_plugs_in_by_registration_and_its_cohort_computes(service_settings, celery_app, worker, api_project,
                                                                   tmp_path):
    from app import create_app

    name, _, headers = api_project
    pq.write_table(pa.table({"distinct_id": ["a", "b", "c"], "level": pa.array([1, 5, 5], pa.int64())}),
                   tmp_path / "u.parquet")
    ProjectEngine(service_settings.engine, name).ingest_users(tmp_path / "u.parquet")
    settings = replace(service_settings, dialects="sensors,sugo,tests.dialects.throwaway")
    client = create_app({"TESTING": True, "SETTINGS": settings, "CELERY": celery_app}).test_client()

    response = client.post("/throwaway/cohorts", json={"name": "level5", "tree": LEVEL_5}, headers=headers)
    assert response.status_code == 202, response.get_json()
    created = response.get_json()

    def ended():
        job = client.get(f"/api/v1/jobs/{created['job']}", headers=headers).get_json()
        return job if job["status"] in ("succeed", "failed") else None

    job = wait_until(ended, timeout=30, what="the throwaway dialect's job")
    assert job["status"] == "succeed" and job["result"]["count"] == 2, job
    cohort = client.get(f"/api/v1/cohorts/{created['cohort']}", headers=headers).get_json()
    assert cohort["dialect"] == "throwaway" and cohort["latest_version"]["count"] == 2
    # The service's rules hold for it too: a taken name, a bad tree.
    again = client.post("/throwaway/cohorts", json={"name": "level5", "tree": LEVEL_5}, headers=headers)
    assert again.status_code == 409 and again.get_json()["errors"] == {"name": ["already exists"]}
    bad = client.post("/throwaway/cohorts", json={"name": "bad", "tree": {"op": "xor"}}, headers=headers)
    assert bad.status_code == 400


def test_a_dialect_not_enabled_serves_nothing(client, api_project):
    _, _, headers = api_project
    assert client.post("/throwaway/cohorts", json={}, headers=headers).status_code == 404
