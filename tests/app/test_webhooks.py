"""Webhooks end to end: registered over the API, recorded when a real worker publishes a version or fails a job,
delivered by the real `webhooks.deliver` task to a real HTTP server of the test (tests/servers.py
WebhookReceiver stands in for a client's endpoint), signatures checked here with hmac, independently."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from cohort_engine import db
from core.data import sugo_targets
from tests.app.test_cohorts_api import poll_job
from tests.servers import WebhookReceiver
from tests.services import wait_until

FIRST = ["a", "b", "c"]
SECOND = ["b", "c", "d", "e"]


def ids(keys):
    return {"type": "ids", "keys": keys}


def allow(database_url, project_id, port, host="127.0.0.1"):
    with db.connection(database_url) as conn:
        sugo_targets.add(conn, project_id, "webhook", host, port)


def deny(database_url, project_id, port, host="127.0.0.1"):
    with db.connection(database_url) as conn:
        sugo_targets.remove(conn, project_id, "webhook", host, port)


def register(client, headers, url, **fields):
    answer = client.post("/api/v1/webhooks", json={"url": url, **fields}, headers=headers)
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def deliveries(client, headers, webhook_id, status=None):
    query = f"?status={status}" if status else ""
    return client.get(f"/api/v1/webhooks/{webhook_id}/deliveries{query}", headers=headers).get_json()["deliveries"]


def wait_final(client, headers, webhook_id, count):
    """The webhook's deliveries once `count` exist and none is pending."""
    def done():
        found = deliveries(client, headers, webhook_id)
        return found if len(found) >= count and all(d["status"] != "pending" for d in found) else None

    return wait_until(done, timeout=30, interval=0.05, what=f"{count} deliveries of webhook {webhook_id} to finish")


def verified(request, secret: str) -> dict:
    """The JSON body of a received request after checking its signature as a receiver would."""
    expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-Cohorts-Signature"], expected)
    return json.loads(request.body)


def create(client, headers, name, keys):
    answer = client.post("/api/v1/cohorts", json={"name": name, "definition": ids(keys)}, headers=headers)
    assert answer.status_code == 202, answer.get_json()
    job, _ = poll_job(client, headers, answer.get_json()["job"]["id"])
    return answer.get_json()["cohort"]["id"], job


def test_published_versions_are_delivered_signed(client, worker, api_project, database_url):
    name, project_id, headers = api_project
    with WebhookReceiver() as receiver:
        allow(database_url, project_id, receiver.port)
        hook = register(client, headers, receiver.url("/cohort-events"))
        assert len(hook["secret"]) >= 32 and hook["events"] == ["version.published", "job.failed"]
        assert "secret" not in client.get(f"/api/v1/webhooks/{hook['id']}", headers=headers).get_json()
        cohort_id, job1 = create(client, headers, "hooked", FIRST)
        wait_final(client, headers, hook["id"], 1)
        patched = client.patch(f"/api/v1/cohorts/{cohort_id}", json={"definition": ids(SECOND)}, headers=headers)
        job2, _ = poll_job(client, headers, patched.get_json()["job"]["id"])
        records = wait_final(client, headers, hook["id"], 2)
    assert [r.path for r in receiver.received] == ["/cohort-events"] * 2
    first, second = (verified(r, hook["secret"]) for r in receiver.received)
    assert {k: first[k] for k in ("event", "project", "entity", "cohort", "version", "count", "entered", "left",
                                  "status", "error_code", "job")} == {
        "event": "version.published", "project": name, "entity": "cohort", "cohort": cohort_id,
        "version": job1["result"]["version_id"],
        "count": 3, "entered": 3, "left": 0, "status": "succeed", "error_code": None, "job": job1["id"]}
    # Entered and left as set differences of the two definitions' keys.
    assert (second["version"], second["count"], second["entered"], second["left"]) == (
        job2["result"]["version_id"], len(SECOND), len(set(SECOND) - set(FIRST)), len(set(FIRST) - set(SECOND)))
    assert receiver.received[1].headers["X-Cohorts-Event"] == "version.published"
    assert [int(r.headers["X-Cohorts-Delivery"]) for r in receiver.received] == [first["delivery"], second["delivery"]]
    # The delivery records, newest first.
    assert [(d["status"], d["attempts"], d["status_code"], d["body"]["delivery"]) for d in records] == [
        ("delivered", 1, 200, second["delivery"]), ("delivered", 1, 200, first["delivery"])]
    # A tampered body fails the same check.
    tampered = type(receiver.received[0])(0, "/", receiver.received[0].headers, receiver.received[0].body + b" ")
    with pytest.raises(AssertionError):
        verified(tampered, hook["secret"])


def test_failing_receiver_is_retried_with_backoff_until_it_recovers(client, worker, api_project, database_url,
                                                                     service_settings):
    _, project_id, headers = api_project
    with WebhookReceiver(statuses=[500, 503]) as receiver:
        allow(database_url, project_id, receiver.port)
        hook = register(client, headers, receiver.url(), secret="s" * 20, events=["version.published"])
        create(client, headers, "flaky", FIRST)
        (record,) = wait_final(client, headers, hook["id"], 1)
    assert (record["status"], record["attempts"], record["status_code"]) == ("delivered", 3, 200)
    assert [(h["attempt"], h["status_code"]) for h in record["history"]] == [(1, 500), (2, 503), (3, 200)]
    assert record["history"][0]["error"] == "HTTP 500"
    # The same signed body each time, and the waits between tries double (base, then 2 x base).
    assert len({r.body for r in receiver.received}) == 1 and len(receiver.received) == 3
    verified(receiver.received[-1], "s" * 20)
    base = service_settings.webhook_backoff_base
    gaps = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
    assert gaps[0] >= base and gaps[1] >= 2 * base, gaps


def test_receiver_that_never_recovers_ends_failed_after_max_attempts(client, worker, api_project, database_url,
                                                                     service_settings):
    _, project_id, headers = api_project
    attempts = service_settings.webhook_max_attempts
    with WebhookReceiver(statuses=[500] * (attempts + 5)) as receiver:
        allow(database_url, project_id, receiver.port)
        hook = register(client, headers, receiver.url())
        create(client, headers, "down", FIRST)
        (record,) = wait_final(client, headers, hook["id"], 1)
    assert (record["status"], record["attempts"], record["status_code"]) == ("failed", attempts, 500)
    assert len(receiver.received) == attempts
    assert deliveries(client, headers, hook["id"], status="failed") == [record]
    assert deliveries(client, headers, hook["id"], status="delivered") == []


def test_failed_jobs_are_delivered(client, worker, api_project, database_url):
    _, project_id, headers = api_project
    with WebhookReceiver() as receiver:
        allow(database_url, project_id, receiver.port)
        project_hook = register(client, headers, receiver.url("/all"), events=["job.failed"])
        with db.connection(database_url) as conn, conn.cursor() as cur:
            # A backend kind nobody registered: every job of the project fails `unsupported`.
            cur.execute("UPDATE projects SET backend = '{\"kind\": \"nowhere\"}' WHERE id = %s", (project_id,))
        cohort_id, job = create(client, headers, "fails", FIRST)
        assert job["status"] == "failed"
        (record,) = wait_final(client, headers, project_hook["id"], 1)
    body = verified(receiver.received[0], project_hook["secret"])
    assert (body["event"], body["cohort"], body["status"], body["error_code"], body["job"], body["count"]) == (
        "job.failed", cohort_id, "failed", job["error_code"], job["id"], None)
    assert body["error_code"] == "unsupported" and record["status"] == "delivered"
    versions = client.get(f"/api/v1/cohorts/{cohort_id}/versions", headers=headers).get_json()["versions"]
    assert body["version"] == versions[0]["id"] and versions[0]["status"] == "failed"


def test_cohort_webhooks_hear_only_their_cohort(client, worker, api_project, database_url):
    _, project_id, headers = api_project
    with WebhookReceiver() as receiver:
        allow(database_url, project_id, receiver.port)
        cohort_id, _ = create(client, headers, "watched", FIRST)
        hook = register(client, headers, receiver.url("/one"), cohort_id=cohort_id)
        create(client, headers, "unwatched", SECOND)
        client.post(f"/api/v1/cohorts/{cohort_id}/refresh", headers=headers)
        wait_final(client, headers, hook["id"], 1)
    assert [verified(r, hook["secret"])["cohort"] for r in receiver.received] == [cohort_id]


def test_addresses_outside_the_allowlist_are_refused_and_never_contacted(client, worker, api_project, database_url,
                                                                         service_settings):
    _, project_id, headers = api_project
    with WebhookReceiver() as receiver:
        # Not allowed: 400 naming url, nothing written.
        answer = client.post("/api/v1/webhooks", json={"url": receiver.url()}, headers=headers)
        assert answer.status_code == 400 and "not a webhook target allowed" in answer.get_json()["errors"]["url"][0]
        # The service's own stores are refused even when an operator allowed them.
        own = service_settings.engine.redis_url.split("//")[1].split("/")[0]
        allow(database_url, project_id, int(own.split(":")[1]), own.split(":")[0])
        answer = client.post("/api/v1/webhooks", json={"url": f"http://{own}/x"}, headers=headers)
        assert answer.status_code == 400 and "own stores" in answer.get_json()["errors"]["url"][0]
        for bad in ({"url": "ftp://127.0.0.1/x"}, {"url": "http://u:p@127.0.0.1:1/x"}, {"url": receiver.url(),
                    "secret": "short"}, {"url": receiver.url(), "events": ["cohort.deleted"]},
                    {"url": receiver.url(), "cohort_id": 2147483647}):
            refused = client.post("/api/v1/webhooks", json=bad, headers=headers)
            assert refused.status_code == 400, (bad, refused.get_json())
        assert client.get("/api/v1/webhooks", headers=headers).get_json()["total"] == 0
        # Allowed at registration, removed before delivery: the delivery fails without contacting anyone.
        allow(database_url, project_id, receiver.port)
        hook = register(client, headers, receiver.url())
        deny(database_url, project_id, receiver.port)
        create(client, headers, "refused", FIRST)
        (record,) = wait_final(client, headers, hook["id"], 1)
        assert client.patch(f"/api/v1/webhooks/{hook['id']}", json={"url": receiver.url("/other")},
                            headers=headers).status_code == 400
    assert (record["status"], record["attempts"], record["status_code"]) == ("failed", 1, None)
    assert record["error"].startswith("not_allowed:")
    assert receiver.received == []


def test_webhook_crud_and_the_openapi_example(client, api_project, database_url):
    from app.api.webhooks import EXAMPLE

    _, project_id, headers = api_project
    # The example of /openapi.json is accepted once its address is allowed (as its description says).
    allow(database_url, project_id, 9000)
    spec = client.get("/openapi.json").get_json()
    example = spec["paths"]["/api/v1/webhooks"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert example == EXAMPLE
    hook = register(client, headers, **example)
    patched = client.patch(f"/api/v1/webhooks/{hook['id']}", json={"active": False}, headers=headers).get_json()
    assert patched["active"] is False and "secret" not in patched
    rotated = client.patch(f"/api/v1/webhooks/{hook['id']}", json={"secret": "n" * 16}, headers=headers).get_json()
    assert rotated["secret"] == "n" * 16
    assert client.patch(f"/api/v1/webhooks/{hook['id']}", json={}, headers=headers).status_code == 400
    listed = client.get("/api/v1/webhooks", headers=headers).get_json()
    assert listed["total"] == 1 and listed["webhooks"][0]["id"] == hook["id"]
    assert client.delete(f"/api/v1/webhooks/{hook['id']}", headers=headers).get_json() == {"deleted": hook["id"]}
    assert client.get(f"/api/v1/webhooks/{hook['id']}", headers=headers).status_code == 404
    assert client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=headers).status_code == 404
