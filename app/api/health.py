"""GET /healthz: PostgreSQL, Redis, live workers and queued jobs, each healthy or not."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time

from flask import Blueprint, current_app, jsonify, request

from app.db import get_broker_redis, get_db, get_redis, settings
from app.errors import ApiError
from core.data import jobs
from core.queue import broker_job_ids, job_task_names, urgent_queue

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    checks = {}
    try:
        with get_db().cursor() as cur:
            cur.execute("SELECT 1")
        checks["postgres"] = {"ok": True}
    except Exception as exc:
        checks["postgres"] = {"ok": False, "error": str(exc).strip()}
    try:
        get_redis().ping()
        checks["redis"] = {"ok": True}
    except Exception as exc:
        checks["redis"] = {"ok": False, "error": str(exc)}
    try:
        checks["workers"] = workers_check()
    except Exception as exc:
        checks["workers"] = {"ok": False, "error": str(exc), "live": []}
    checks["queue"] = queue_check()
    healthy = all(c["ok"] for c in checks.values())
    return jsonify({"ok": healthy, "checks": checks}), 200 if healthy else 503


def workers_check() -> dict:
    """Live workers, and whether the compute and the maintenance queue each have one consuming them.

    Without a maintenance worker no job is reaped and no cron fires, while every compute worker
    still answers a ping: so the check asks which queues each worker consumes (one broadcast).
    """
    replies = current_app.extensions["celery"].control.inspect(timeout=1.0).active_queues() or {}
    consumed: dict[str, list[str]] = {}
    for worker, queues in sorted(replies.items()):
        for queue in queues or []:
            consumed.setdefault(queue["name"], []).append(worker)
    needed = (settings().queue, settings().maintenance_queue)
    missing = [queue for queue in needed if not consumed.get(queue)]
    check = {"ok": bool(replies) and not missing, "live": sorted(replies), "queues": consumed}
    if missing:
        check["error"] = "no worker consumes " + ", ".join(missing) + " (the Procfile's worker and maintenance)"
    return check


def queue_check() -> dict:
    """Jobs stuck `new` without a broker message past the sweeper's resend (a lost queue nobody resent).

    Reads the broker's queue only when some job has waited that long, as the sweeper does, and then
    at most once per COHORTS_SWEEP_INTERVAL per web process (a backlog makes that read cost ~8 ms
    per 1,000 messages; probes may call often).
    """
    s = settings()
    if not s.broker_url.startswith("redis"):
        return {"ok": True}
    cached = current_app.extensions.setdefault("queue_check", {"until": 0.0, "check": None})
    try:
        # By then the sweeper (every COHORTS_SWEEP_INTERVAL s) has resent any job the broker lost.
        older_than = s.lost_after + 2 * s.sweep_interval
        waiting = jobs.enqueued_waiting(get_db(), older_than)
        if not waiting:
            return {"ok": True, "stuck": 0}
        if cached["until"] > time.monotonic():
            return cached["check"]
        present = broker_job_ids(get_broker_redis(), [s.queue, urgent_queue(s.queue)], job_task_names(s))
        stuck = [job["id"] for job in waiting if job["id"] not in present]
    except Exception as exc:
        return {"ok": False, "error": str(exc).strip()}
    check = {"ok": not stuck, "stuck": len(stuck)}
    if stuck:
        check["job_ids"] = stuck[:20]
        check["error"] = (f"{len(stuck)} jobs are new with no broker message for over {older_than:g} s; "
                          "check that beat and the sweeper run")
    cached.update(until=time.monotonic() + s.sweep_interval, check=check)
    return check


@bp.get("/ping")
def ping():
    """Liveness without touching any service (also the baseline of the API benchmark)."""
    return jsonify({"pong": True})


@bp.get("/metrics")
def metrics():
    """Prometheus text format: jobs by kind and status, queue wait and heartbeat lag."""
    check_metrics_access()
    conn = get_db()
    lines = ["# HELP cohorts_jobs Jobs by kind and status.", "# TYPE cohorts_jobs gauge"]
    for kind, status, count in jobs.status_counts(conn):
        lines.append(f'cohorts_jobs{{kind="{kind}",status="{status}"}} {count}')
    waited, lag = jobs.queue_ages(conn)
    lines += ["# HELP cohorts_oldest_new_job_seconds How long the oldest job has waited in status new.",
              "# TYPE cohorts_oldest_new_job_seconds gauge", f"cohorts_oldest_new_job_seconds {waited:.3f}",
              "# HELP cohorts_max_heartbeat_lag_seconds Largest heartbeat age of a computing job.",
              "# TYPE cohorts_max_heartbeat_lag_seconds gauge", f"cohorts_max_heartbeat_lag_seconds {lag:.3f}"]
    return "\n".join(lines) + "\n", 200, {"Content-Type": "text/plain; version=0.0.4"}


def _is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return False
    # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def check_metrics_access() -> None:
    """Loopback scrapes pass; others need COHORTS_METRICS_TOKEN as a Bearer token (docs/jobs.md)."""
    # A forwarded request reaches us from a local proxy's address but comes from elsewhere.
    forwarded = any(h in request.headers for h in ("X-Forwarded-For", "Forwarded", "X-Real-Ip"))
    if _is_loopback(request.remote_addr) and not forwarded:
        return
    token = settings().metrics_token
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode()):
        return
    log.info("metrics refused remote=%s forwarded=%s token_sent=%s", request.remote_addr, forwarded, bool(sent))
    if not token:
        raise ApiError(403, "/metrics answers loopback clients only (set COHORTS_METRICS_TOKEN to scrape remotely)")
    raise ApiError(401 if not sent else 403, "/metrics needs the metrics token (Authorization: Bearer, "
                                            "COHORTS_METRICS_TOKEN) from a non-loopback address")
