"""Bearer-token authentication: each token belongs to one project."""

from __future__ import annotations

from functools import wraps

from flask import g, request

from app.data import projects
from app.db import get_db
from app.errors import ApiError


def require_project(view):
    """Resolve the project of the request's token into g.project, or answer 401."""
    @wraps(view)
    def wrapped(*args, **kwargs):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <project token>'")
        project = projects.by_token(get_db(), token.strip())
        if project is None:
            raise ApiError(401, "invalid token")
        g.project = project
        return view(*args, **kwargs)
    return wrapped
