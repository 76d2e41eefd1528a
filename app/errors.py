"""Error responses: marshmallow errors -> 400 with paths, HTTP errors and unreachable services as JSON.

Every error body is {"error": message, "errors"?: {field path: [messages]}} (the Error schema of
/openapi.json); /druid/v2 answers keep Druid's own shape.
"""

from __future__ import annotations

import logging

import psycopg2
import redis
from flask import jsonify, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge

from cohort_engine.definition import DefinitionError, flatten_errors
from core.errors import Conflict, DomainError, Forbidden, Invalid, NotFound, Unavailable

log = logging.getLogger(__name__)

INVALID = "invalid input; nothing was written"
# The status of each domain error of the core services (most specific class first).
DOMAIN_STATUS = ((NotFound, 404), (Conflict, 409), (Invalid, 400), (Forbidden, 403), (Unavailable, 503))


class ApiError(Exception):
    """An error with a status code and a JSON body."""

    def __init__(self, status: int, message: str, **extra):
        self.status = status
        self.body = {"error": message, **extra}
        super().__init__(message)


def bad_request(errors: dict[str, list[str]]):
    return error_response({"error": INVALID, "errors": errors}, 400)


def _druid_shape(body: dict) -> dict:
    from cohort_engine.broker.errors import BadQuery

    detail = "; ".join(f"{path}: {', '.join(msgs)}" for path, msgs in body.get("errors", {}).items())
    return BadQuery(detail or body["error"]).body()


def error_response(body: dict, status: int, headers=None):
    # The embedded Druid broker's clients parse Druid's error shape, also for input refused app-wide.
    if status in (400, 413) and request.path.startswith("/druid/"):
        body = _druid_shape(body)
    response = jsonify(body)
    response.status_code = status
    for name, value in headers or ():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def init_app(app) -> None:
    @app.errorhandler(ValidationError)
    def _validation(exc):
        return bad_request(flatten_errors(exc.messages))

    @app.errorhandler(DefinitionError)
    def _definition(exc):
        return bad_request({f"definition.{k}" if k != "_root" else "definition": v for k, v in exc.errors.items()})

    @app.errorhandler(ApiError)
    def _api(exc):
        return error_response(exc.body, exc.status)

    @app.errorhandler(DomainError)
    def _domain(exc):
        status = next((code for kind, code in DOMAIN_STATUS if isinstance(exc, kind)), 500)
        return error_response(exc.body(), status)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc):
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return error_response({"error": f"the request body is larger than {limit} bytes, this service's limit"
                                        " (COHORTS_MAX_BODY_BYTES); nothing was read"}, 413)

    @app.errorhandler(HTTPException)
    def _http(exc):
        # get_headers carries what the status needs, such as Allow on a 405.
        return error_response({"error": exc.description}, exc.code, exc.get_headers())

    @app.errorhandler(InternalServerError)
    def _internal(exc):
        original = getattr(exc, "original_exception", None)
        log.error("unhandled error path=%s method=%s error=%r", request.path, request.method, original)
        return error_response({"error": "internal error; the request may not have been carried out"}, 500)

    @app.errorhandler(psycopg2.OperationalError)
    def _postgres_down(exc):
        log.error("postgres unreachable: %s", exc)
        return jsonify({"error": "PostgreSQL is unreachable; nothing was written. Retry when it is back."}), 503

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    def _redis_down(exc):
        log.error("redis unreachable: %s", exc)
        return jsonify({"error": "Redis (broker or bitmap store) is unreachable; nothing was written. "
                                 "Retry when it is back."}), 503
