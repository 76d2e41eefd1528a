"""Dashboard views: login by token (a cookie), the project's cohorts and jobs, live progress as JSON."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, g, jsonify, make_response, redirect, render_template, request, url_for

from app.auth import TokenPolicy, current_project, project_for_token
from app.db import get_db
from app.errors import ApiError
from core.data import jobs
from core.services.overview import project_overview

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/dashboard/static")

COOKIE = "cohorts_token"
# The token from the login cookie or an Authorization header; token-less visits only where the
# operator named a project for them (COHORTS_DASHBOARD_PROJECT).
POLICY = TokenPolicy(cookie=COOKIE, fallback_setting="dashboard_project",
                     missing="log in with the project's token")
CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 120, 28, 3


def visitor_project() -> dict | None:
    """The project the visitor may see, or None (then the login form is shown)."""
    try:
        return current_project(POLICY)
    except ApiError as exc:
        if exc.status in (401, 404):
            return None
        raise


def login_page(error: str | None = None, status: int = 200):
    return make_response(render_template("dashboard/login.html", error=error), status)


@bp.get("/")
def index():
    project = visitor_project()
    if project is None:
        return login_page()
    overview = project_overview(get_db(), project)
    for item in overview["cohorts"] + overview["tags"]:
        item["chart"] = chart(item["history"])
    response = make_response(render_template("dashboard/index.html", project=project, now=datetime.now(UTC),
                                             refresh_ms=refresh_ms(), **overview))
    response.headers["Cache-Control"] = "no-store"
    return response


def refresh_ms() -> int:
    """How often the page polls running jobs: ?refresh=<ms> (200..60000), default 1000."""
    try:
        return min(max(int(request.args.get("refresh", 1000)), 200), 60_000)
    except ValueError:
        return 1000


@bp.post("/login")
def login():
    token = request.form.get("token", "").strip()
    if not token or project_for_token(token) is None:
        return login_page("unknown token: paste the project's API token", 401)
    response = redirect(url_for("dashboard.index"), 303)
    # HttpOnly: page scripts never read it; SameSite=Strict: other sites' pages never send it.
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure, path="/")
    return response


@bp.post("/logout")
def logout():
    response = redirect(url_for("dashboard.index"), 303)
    response.delete_cookie(COOKIE, path="/")
    return response


@bp.get("/dashboard/live.json")
def live():
    """The project's new and computing jobs with their progress (the page's script polls it)."""
    if visitor_project() is None:
        raise ApiError(401, "log in at / with the project's token")
    rows = jobs.live_in_project(get_db(), g.project["id"])
    return jsonify({"jobs": rows}), 200, {"Cache-Control": "no-store"}


def chart(history: list[dict]) -> dict | None:
    """An inline-SVG line of the counts over recent versions: points in a CHART_WIDTH x CHART_HEIGHT box."""
    counts = [v["count"] for v in history if v["count"] is not None]
    if not counts:
        return None
    low, high = min(counts), max(counts)
    span = (high - low) or 1
    step = (CHART_WIDTH - 2 * CHART_PAD) / max(len(counts) - 1, 1)
    points = []
    for i, count in enumerate(counts):
        x = CHART_PAD + i * step if len(counts) > 1 else CHART_WIDTH / 2
        # A flat series sits in the middle; otherwise the highest count is at the top.
        y = CHART_HEIGHT / 2 if high == low else CHART_HEIGHT - CHART_PAD - (count - low) * (CHART_HEIGHT - 2 * CHART_PAD) / span
        points.append((round(x, 1), round(y, 1)))
    return {"points": " ".join(f"{x},{y}" for x, y in points), "last": points[-1], "n": len(points),
            "low": low, "high": high, "width": CHART_WIDTH, "height": CHART_HEIGHT,
            "title": " → ".join(f"{c:,}" for c in counts[-8:])}
