"""Bearer-token authentication: each token belongs to one project."""

from __future__ import annotations

import time
from functools import wraps

from flask import current_app, g, request

from app.db import get_db
from app.errors import ApiError
from core.data import projects

TOKEN_CACHE_SECONDS = 10.0


def _project_for(token: str) -> dict | None:
    """The project of a token; known tokens are cached briefly, so a revoked token works up to 10 s more."""
    cache = current_app.extensions.setdefault("token_cache", {})
    hit = cache.get(token)
    if hit and hit[1] > time.monotonic():
        return hit[0]
    project = projects.by_token(get_db(), token)
    if project is not None:
        if len(cache) > 1000:
            cache.clear()
        cache[token] = (project, time.monotonic() + TOKEN_CACHE_SECONDS)
    return project


MISSING_TOKEN = "missing bearer token: send 'Authorization: Bearer <project token>'"


def bearer_token() -> str:
    """The request's Bearer token, or "" if it sends none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def project_of_token(token: str) -> dict:
    project = _project_for(token)
    if project is None:
        raise ApiError(401, "invalid token")
    g.project = project
    return project


def require_project(view):
    """Resolve the project of the request's token into g.project, or answer 401."""
    @wraps(view)
    def wrapped(*args, **kwargs):
        token = bearer_token()
        if not token:
            raise ApiError(401, MISSING_TOKEN)
        project_of_token(token)
        return view(*args, **kwargs)
    return wrapped


def sugo_project(fallback_name: str) -> dict:
    """The project of a Sugo call: its token (Bearer, or Sugo's ?token=), else the operator's named fallback.

    Token-less calls are what Sugo's own clients make; they are accepted only when the operator
    named a project for them (COHORTS_SUGO_PROJECT), and then act for that project.
    """
    token = bearer_token() or request.args.get("token", "").strip()
    if token:
        return project_of_token(token)
    if not fallback_name:
        raise ApiError(401, MISSING_TOKEN + " (or ?token=); token-less Sugo calls are accepted only when the operator "
                       "names a project for them with COHORTS_SUGO_PROJECT")
    project = projects.by_name(get_db(), fallback_name)
    if project is None:
        raise ApiError(404, f"project {fallback_name!r} (COHORTS_SUGO_PROJECT, used when no token is sent) "
                       "does not exist")
    g.project = project
    return project
