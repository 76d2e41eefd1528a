"""Bearer-token authentication: each token belongs to one project."""

from __future__ import annotations

import time
from functools import wraps

from flask import current_app, g, request

from app.data import projects
from app.db import get_db
from app.errors import ApiError

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


def require_project(view):
    """Resolve the project of the request's token into g.project, or answer 401."""
    @wraps(view)
    def wrapped(*args, **kwargs):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <project token>'")
        project = _project_for(token.strip())
        if project is None:
            raise ApiError(401, "invalid token")
        g.project = project
        return view(*args, **kwargs)
    return wrapped
