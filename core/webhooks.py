"""Webhooks (docs/webhooks.md): events recorded as deliveries in the publishing transaction, sent after the commit
to the `webhooks.deliver` task, which signs and posts them with retries and exponential backoff.

The sender is any object with Celery's `send_task` (core does not import Celery), as in core/queue.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from cohort_engine import db
from core import addresses
from core.data import projects, sugo_targets, webhook_deliveries, webhooks

log = logging.getLogger(__name__)

DELIVER_TASK = "webhooks.deliver"
SIGNATURE_HEADER = "X-Cohorts-Signature"
EVENT_HEADER = "X-Cohorts-Event"
DELIVERY_HEADER = "X-Cohorts-Delivery"
NOT_ALLOWED = ("is not a webhook target allowed for this project (python -m core.manage allow PROJECT --webhook "
               "HOST:PORT); nothing was contacted")


def sign(secret: str, body: bytes) -> str:
    """The signature header value: sha256=<hex HMAC-SHA256 of the body under the webhook's secret>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# -- addresses ------------------------------------------------------------------------------------------


def url_address(url: str) -> tuple[str, int]:
    """(host, port) of a webhook URL (http or https, no credentials); ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@); sign with the webhook's secret instead")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has a bad port") from None
    if not parts.hostname:
        raise ValueError("has no host")
    return addresses.normal_host(parts.hostname), port or addresses.DEFAULT_PORTS[parts.scheme]


def address_error(conn, settings, project_id: int, url: str) -> str | None:
    """Why the project may not call url (a bad URL, one of our own stores, not allowlisted), or None."""
    try:
        host, port = url_address(url)
    except ValueError as exc:
        return str(exc)
    if addresses.is_own(addresses.own_addresses(settings), host, port):
        return f"{host}:{port} is one of this service's own stores (PostgreSQL, Redis); it is never a webhook target"
    allowed = {(row["host"], row["port"]) for row in sugo_targets.for_project(conn, project_id, "webhook")}
    if (host, port) not in allowed:
        return f"{host}:{port} " + NOT_ALLOWED
    return None


# -- events: recorded in the caller's transaction, sent after its commit ---------------------------------


def _iso(value):
    return value.isoformat() if value is not None else None


def record(conn, cohort: dict, event: str, *, version: dict | None, job: dict | None,
           project: dict | None = None) -> list[int]:
    """Write one delivery per subscribed webhook for this event (uncommitted); the delivery ids to send."""
    hooks = webhooks.subscribed(conn, cohort["project_id"], cohort["id"], event)
    if not hooks:
        return []
    project = project or projects.by_id(conn, cohort["project_id"])
    version = version or {}
    payload = {
        "event": event, "project": project["name"], "cohort": cohort["id"], "cohort_name": cohort["name"],
        # Tags share the cohorts table's ids and versions (their versions have no entered / left).
        "entity": cohort.get("entity", "cohort"),
        "version": version.get("id"), "definition_version": version.get("definition_version"),
        "base_time": _iso(version.get("base_time") or (job or {}).get("base_time")),
        "count": version.get("count"), "entered": version.get("entered_count"), "left": version.get("left_count"),
        "status": version.get("status") or (job or {}).get("status"), "error_code": version.get("error_code"),
        "error_message": version.get("error_message"), "job": (job or {}).get("id"),
        "at": datetime.now(UTC).isoformat(),
    }
    ids = []
    for hook in hooks:
        delivery_id = webhook_deliveries.next_id(conn)
        body = json.dumps({**payload, "webhook": hook["id"], "delivery": delivery_id}, sort_keys=True,
                          separators=(",", ":"))
        webhook_deliveries.insert_with_id(conn, delivery_id, hook["id"], event, body, cohort_id=cohort["id"],
                                          version_id=version.get("id"), job_id=(job or {}).get("id"))
        ids.append(delivery_id)
    return ids


def send(sender, delivery_ids: list[int]) -> None:
    """Send committed deliveries to the delivery task; one that cannot be sent is resent by the sweeper."""
    if sender is None or not delivery_ids:
        return
    for delivery_id in delivery_ids:
        try:
            sender.send_task(DELIVER_TASK, args=[delivery_id])
        except Exception as exc:  # broker down: the sweeper sends it after COHORTS_WEBHOOK_LOST_AFTER
            log.warning("delivery=%s enqueue failed: %s", delivery_id, exc)


# -- delivery --------------------------------------------------------------------------------------------


_session: requests.Session | None = None


def _http() -> requests.Session:
    global _session
    if _session is None:
        session = requests.Session()
        # Only the allowlisted address is contacted: no proxy from the environment, no redirect (below).
        session.trust_env = False
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=8, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        _session = session
    return _session


def backoff(settings, attempts: int) -> float:
    """Seconds before attempt attempts + 1: base * 2^(attempts - 1), capped (under the broker's visibility timeout)."""
    cap = min(settings.webhook_backoff_max, settings.visibility_timeout / 2)
    return min(settings.webhook_backoff_base * 2 ** max(attempts - 1, 0), cap)


def deliver(settings, delivery_id: int) -> float | None:
    """Make one attempt of a pending delivery; the seconds until the next attempt, or None when it is final."""
    with db.connection(settings.engine.database_url) as conn:
        delivery = webhook_deliveries.claim(conn, delivery_id)
        if delivery is None:
            return None  # finished, deleted with its webhook, or another try holds it
        hook = webhooks.get_any(conn, delivery["webhook_id"])
        started = time.monotonic()
        attempt = {"at": datetime.now(UTC).isoformat()}
        problem = None if hook["active"] else "the webhook was deactivated before this delivery was sent"
        if problem is None:
            problem = address_error(conn, settings, hook["project_id"], hook["url"])
            if problem is not None:
                problem = f"not_allowed: {hook['url']} {problem}"
        if problem is not None:
            attempt["error"] = problem
            webhook_deliveries.record_attempt(conn, delivery_id, attempt, "failed", None)
            log.warning("delivery=%s webhook=%s status=failed error=%r", delivery_id, hook["id"], problem)
            return None
        body = delivery["body"].encode()
        project = projects.by_id(conn, hook["project_id"])
        headers = {"Content-Type": "application/json", "User-Agent": "cohorts-webhooks/1",
                   SIGNATURE_HEADER: sign(hook["secret"], body), EVENT_HEADER: delivery["event"],
                   DELIVERY_HEADER: str(delivery_id), "X-Cohorts-Project": project["name"]}
        try:
            answer = _http().post(hook["url"], data=body, headers=headers, timeout=settings.webhook_timeout,
                                  allow_redirects=False)
            attempt["status_code"] = answer.status_code
            answer.close()
            ok = 200 <= answer.status_code < 300
            if not ok:
                attempt["error"] = f"HTTP {answer.status_code}"
        except requests.RequestException as exc:
            ok = False
            attempt["error"] = f"{type(exc).__name__}: {exc}"
        attempt["seconds"] = round(time.monotonic() - started, 4)
        attempts = delivery["attempts"] + 1
        if ok:
            status, retry_in = "delivered", None
        elif attempts >= settings.webhook_max_attempts:
            status, retry_in = "failed", None
        else:
            status, retry_in = "pending", backoff(settings, attempts)
        webhook_deliveries.record_attempt(conn, delivery_id, attempt, status, retry_in)
    log.info("delivery=%s webhook=%s attempt=%s status=%s status_code=%s", delivery_id, hook["id"], attempts, status,
             attempt.get("status_code"))
    return retry_in


def public(hook: dict) -> dict:
    """The client-facing view of a webhook (the secret is shown only when it is created)."""
    return {"id": hook["id"], "url": hook["url"], "cohort_id": hook["cohort_id"], "events": list(hook["events"]),
            "active": hook["active"], "created_at": _iso(hook["created_at"]), "updated_at": _iso(hook["updated_at"])}


def public_delivery(delivery: dict) -> dict:
    return {"id": delivery["id"], "webhook_id": delivery["webhook_id"], "event": delivery["event"],
            "cohort_id": delivery["cohort_id"], "version_id": delivery["version_id"], "job_id": delivery["job_id"],
            "status": delivery["status"], "attempts": delivery["attempts"], "status_code": delivery["status_code"],
            "error": delivery["error"], "history": delivery["history"], "body": json.loads(delivery["body"]),
            "created_at": _iso(delivery["created_at"]), "next_attempt_at": _iso(delivery["next_attempt_at"]),
            "finished_at": _iso(delivery["finished_at"])}
