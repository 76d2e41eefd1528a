"""GET /healthz: PostgreSQL, Redis and live workers, each reachable or not."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from app.db import get_db, get_redis

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
        replies = current_app.extensions["celery"].control.ping(timeout=1.0) or []
        workers = sorted(name for reply in replies for name in reply)
        checks["workers"] = {"ok": bool(workers), "live": workers}
    except Exception as exc:
        checks["workers"] = {"ok": False, "error": str(exc), "live": []}
    healthy = all(c["ok"] for c in checks.values())
    return jsonify({"ok": healthy, "checks": checks}), 200 if healthy else 503


@bp.get("/ping")
def ping():
    """Liveness without touching any service (also the baseline of the API benchmark)."""
    return jsonify({"pong": True})
