"""Schemathesis over /openapi.json against the WSGI app: every check, positive and negative data, no 5xx.

Bounded (examples per operation and mode, seeded, deterministic) to stay near half a minute: with
about 70 operations over five dialects, 40 examples each (it was 75 over 25 operations).
For a deeper run: COHORTS_FUZZ_SCALE=10 COHORTS_FUZZ_SEED=<n>.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS
from schemathesis.config import HealthCheck

# 15 examples an operation keep this module near a minute of `make test` (112 s at 40, which left the
# suite too close to its 10-minute bound); COHORTS_FUZZ_SCALE=4 runs a deeper pass by hand.
MAX_EXAMPLES = int(15 * float(os.environ.get("COHORTS_FUZZ_SCALE", "1")))
SEED = int(os.environ.get("COHORTS_FUZZ_SEED", "8"))
STATUSES: Counter = Counter()
# A random object is rarely a valid rule tree, and JSON Schema cannot state the rules between a
# definition's fields (docs/definition.md) or the text forms of Sensors base times and crons, so
# positive bodies of these may be answered 400. Nor can it say that a ThinkingData detail names
# clusterId or clusterName (one of two optional query parameters).
# Sugo bodies name Redis, broker and hproxy targets, which must be on the project's allowlist (an
# operator's table, empty for the fuzzed project): positive ones are answered 400 naming the target.
CROSS_FIELD_BODIES = {"POST /api/v1/cohorts", "PUT /api/v1/cohorts/{cohort_id}", "PATCH /api/v1/cohorts/{cohort_id}",
                      "POST /segmenter/rule", "POST /segmenter/execute", "POST /segmenter/status",
                      "POST /uba/api/cohort", "POST /open/user-cluster-add", "POST /open/user-cluster-update",
                      "POST /open/user-cluster-update-by-name", "GET /open/user-cluster-detail",
                      "POST /ant/usergroup/single", "POST /ant/usergroup/multi", "POST /ant/tag/usergroup/batchUpdate",
                      "POST /ant/tag/query/batchUpdate",
                      # A Druid query's fields depend on its queryType; the broker answers Druid's 400 (its
                      # own fuzz: tests/app/test_druid_fuzz.py).
                      "POST /druid/v2",
                      "POST /api/v1/tags", "PUT /api/v1/tags/{tag_id}", "PATCH /api/v1/tags/{tag_id}",
                      # A random string is rarely an ID file whose IDs match users, nor a free cohort name.
                      "POST /api/v1/uploads", "POST /api/v1/cohorts/import", "PUT /api/v1/cohorts/{cohort_id}/import",
                      "POST /api/v1/tags/import", "PUT /api/v1/tags/{tag_id}/import",
                      # Its hproxy must be on the project's allowlist, which a generated body's is not.
                      "POST /api/v1/tags/{tag_id}/push/sugo",
                      # and a webhook URL must be on the project's allowlist (state, not schema).
                      "POST /api/v1/cohorts/preview", "POST /api/v1/webhooks", "PATCH /api/v1/webhooks/{webhook_id}"}
# Their bodies are ID files: any text is a string, so "schema-violating" text bodies are files too
# (with IDs such as `{}`), and accepting them is right; the parser answers the bad ones 400.
ID_FILE_BODIES = {"POST /api/v1/uploads", "POST /api/v1/cohorts/import", "PUT /api/v1/cohorts/{cohort_id}/import",
                  "POST /api/v1/tags/import", "PUT /api/v1/tags/{tag_id}/import"}
# Ark answers a cohort that does not exist with 400, its documented code for a missing object (docs/dialects/ark.md),
# so a schema-valid id is refused there too.
MISSING_IS_400 = {"GET /uba/api/cohort/{cohort_id}", "DELETE /uba/api/cohort/{cohort_id}",
                  "POST /uba/api/cohort/{cohort_id}/recalculate"}


@pytest.fixture
def app(service_settings, celery_app):
    """The app of conftest, but previews answer 202 at once: waiting for each generated preview's job (it is
    computed either way) would make this test many seconds longer; test_history_api.py covers the 200 path."""
    from dataclasses import replace

    from app import create_app

    return create_app({"TESTING": True, "SETTINGS": replace(service_settings, preview_wait_seconds=0.0),
                       "CELERY": celery_app})


@pytest.fixture
def api_schema(app, api_project, client, worker, maintenance_worker):
    # Both workers: /healthz answers 200 only when the compute and the maintenance queue are consumed.
    name, _, headers = api_project
    # Something to find: a cohort and its job, so that ids near the start are not all 404.
    client.post("/api/v1/cohorts", json={"name": "seeded", "definition": {"type": "ids", "keys": ["u1"]}},
                headers=headers)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    # appKey: Ark's paths (docs/dialects/ark.md) name the project in a header beside the token.
    schema.config.update(headers={**headers, "appKey": name}, suppress_health_check=[HealthCheck.all])
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    max_examples=MAX_EXAMPLES, deterministic=True)
    schema.config.seed = SEED
    return schema


@pytest.fixture(scope="module", autouse=True)
def status_summary():
    yield
    print(f"\nschemathesis answers by status: {dict(sorted(STATUSES.items()))}")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(deadline=None, max_examples=MAX_EXAMPLES, derandomize=True)
def test_api_conforms_to_its_openapi_document(case):
    excluded = []
    if case.operation.label in CROSS_FIELD_BODIES | MISSING_IS_400 and case.meta.generation.mode.is_positive:
        excluded = [CHECKS.get_one("positive_data_acceptance")]
    if case.operation.label in ID_FILE_BODIES and not case.meta.generation.mode.is_positive:
        excluded = [CHECKS.get_one("negative_data_rejection")]
    response = case.call_and_validate(excluded_checks=excluded)
    STATUSES[response.status_code] += 1
    if case.operation.label == "GET /healthz" and response.status_code == 503:
        # An honest "unhealthy" (e.g. a worker too busy to answer the 1 s inspect on a loaded machine)
        # is an answer, not a crash: it must say which check failed.
        body = response.json()
        assert body["ok"] is False and any(not c["ok"] for c in body["checks"].values()), body
        return
    assert response.status_code < 500, (case.operation.label, response.status_code, response.text[:500])
