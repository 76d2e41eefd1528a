"""The webhook delivery task and the sweeper's resend of deliveries whose message was lost (real worker, real
PostgreSQL, a real receiving HTTP server of the test), and the URL rules of core/webhooks.py."""

from __future__ import annotations

import json

import pytest

from cohort_engine import db
from core import webhooks as hooks
from core.data import cohorts, sugo_targets, webhooks
from tests.servers import WebhookReceiver
from tests.services import wait_until


def test_a_delivery_whose_message_was_lost_is_resent_by_the_sweeper(project, database_url, service_settings,
                                                                      celery_app, worker, maintenance_worker):
    name, project_id = project
    with WebhookReceiver() as receiver, db.connection(database_url) as conn:
        sugo_targets.add(conn, project_id, "webhook", "127.0.0.1", receiver.port)
        cohort = cohorts.insert(conn, project_id, "lost", {"type": "ids", "keys": ["a"]})
        hook = webhooks.insert(conn, project_id, receiver.url(), "k" * 16)
        # Recorded (as a publish would) but never sent, and overdue: what a broker restart leaves behind.
        (delivery_id,) = hooks.record(conn, cohort, "version.published", version=None, job=None)
        with conn.cursor() as cur:
            cur.execute("UPDATE webhook_deliveries SET next_attempt_at = now() - make_interval(secs => %s)"
                        " WHERE id = %s", (service_settings.webhook_lost_after + 5, delivery_id))
        conn.commit()
        celery_app.send_task("cohorts.sweep")
        wait_until(lambda: receiver.received, timeout=20, what="the resent delivery to arrive")
        wait_until(lambda: _status(conn, delivery_id) == "delivered", timeout=10,
                   what="the delivery to be recorded delivered")
    assert len(receiver.received) == 1
    assert receiver.received[0].headers["X-Cohorts-Signature"] == hooks.sign("k" * 16, receiver.received[0].body)
    body = json.loads(receiver.received[0].body)
    assert (body["webhook"], body["delivery"], body["cohort"], body["project"]) == (hook["id"], delivery_id,
                                                                                  cohort["id"], name)


def _status(conn, delivery_id):
    with conn.cursor() as cur:
        cur.execute("SELECT status FROM webhook_deliveries WHERE id = %s", (delivery_id,))
        status = cur.fetchone()[0]
    conn.rollback()
    return status


@pytest.mark.parametrize("url, message", [
    ("ftp://h/x", "http:// or https://"),
    ("http://user:pw@h/x", "credentials"),
    ("http://h:99999/x", "bad port"),
    ("http:///x", "no host"),
])
def test_bad_webhook_urls_are_named(url, message):
    with pytest.raises(ValueError, match=message):
        hooks.url_address(url)


def test_webhook_addresses_default_their_port_and_normalise_their_host():
    assert hooks.url_address("https://Hooks.Example.com/x") == ("hooks.example.com", 443)
    assert hooks.url_address("http://[::1]:8080/x") == ("::1", 8080)
    assert hooks.url_address("http://127.0.0.1/x") == ("127.0.0.1", 80)
