"""Bearer-token authentication: each token belongs to one project; one cached resolver for every API.

A dialect whose clients send the token elsewhere, or no token at all, declares a TokenPolicy
(e.g. Sugo's ?token= and its COHORTS_SUGO_PROJECT fallback) instead of resolving tokens itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import wraps

from flask import current_app, g, request

from app.db import get_db, settings
from app.errors import ApiError
from core.data import projects

TOKEN_CACHE_SECONDS = 10.0
MISSING_TOKEN = "missing bearer token: send 'Authorization: Bearer <project token>'"


@dataclass(frozen=True)
class TokenPolicy:
    """Where an API reads its token, and what a call without one gets."""

    # Also accept the token as ?token= (Sensors' and Sugo's clients send it so).
    query_token: bool = False
    # The 401 message of a call without a token.
    missing: str = MISSING_TOKEN
    # The Settings field naming the project a token-less call acts for ("" there: 401 as above).
    fallback_setting: str | None = None
    # The 404 message when that project does not exist ({name} is its name).
    unknown_fallback: str = "project {name!r} does not exist"
    # Also accept the token from this cookie (the dashboard's login sets it).
    cookie: str | None = None
    # A header carrying the bare token (Ark's `token`); when sent, it is the token (before any Bearer token).
    token_header: str | None = None
    # A header naming the project, required with every call (Ark's `appKey`): the token's project's
    # name or app key (projects.app_key), else 401. It names; the token proves.
    project_header: str | None = None


NATIVE = TokenPolicy()


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


def bearer_token() -> str:
    """The request's Bearer token, or "" if it sends none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def project_for_token(token: str) -> dict | None:
    """The project a token belongs to, or None (the cached resolver every API uses)."""
    return _project_for(token)


def current_project(policy: TokenPolicy = NATIVE) -> dict:
    """Resolve the request's project under policy into g.project, or raise 401 (404 for a missing fallback)."""
    # The vendor's own header first: a client sending it means it (even empty), beside any Authorization header.
    if policy.token_header and policy.token_header in request.headers:
        token = request.headers[policy.token_header].strip()
        if not token:
            raise ApiError(401, f"empty {policy.token_header} header: send the project's API token")
    else:
        token = (bearer_token() or (request.args.get("token", "").strip() if policy.query_token else "")
                 or (request.cookies.get(policy.cookie, "").strip() if policy.cookie else ""))
    named = request.headers.get(policy.project_header, "").strip() if policy.project_header else None
    if named == "":
        raise ApiError(401, f"missing {policy.project_header} header: send the project's name or app key")
    if token:
        project = _project_for(token)
        if project is None:
            raise ApiError(401, "invalid token")
        if named is not None and named not in (project["name"], project.get("app_key")):
            raise ApiError(401, f"the token does not belong to the project {policy.project_header} {named!r} names")
    else:
        fallback = getattr(settings(), policy.fallback_setting) if policy.fallback_setting else ""
        if not fallback:
            raise ApiError(401, policy.missing)
        project = projects.by_name(get_db(), fallback)
        if project is None:
            raise ApiError(404, policy.unknown_fallback.format(name=fallback))
    g.project = project
    return project


def require_project(view=None, *, policy: TokenPolicy = NATIVE):
    """Resolve the project of the request's token into g.project before the view, or answer 401."""
    if view is None:
        return lambda view: require_project(view, policy=policy)

    @wraps(view)
    def wrapped(*args, **kwargs):
        current_project(policy)
        return view(*args, **kwargs)
    return wrapped
