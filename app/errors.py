"""Error responses: marshmallow errors -> 400 with paths, HTTP errors and unreachable services as JSON."""

from __future__ import annotations

import logging

import psycopg2
import redis
from flask import jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from cohort_engine.definition import DefinitionError, flatten_errors

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with a status code and a JSON body."""

    def __init__(self, status: int, message: str, **extra):
        self.status = status
        self.body = {"error": message, **extra}
        super().__init__(message)


def bad_request(errors: dict[str, list[str]]):
    return jsonify({"errors": errors}), 400


def init_app(app) -> None:
    @app.errorhandler(ValidationError)
    def _validation(exc):
        return bad_request(flatten_errors(exc.messages))

    @app.errorhandler(DefinitionError)
    def _definition(exc):
        return bad_request({f"definition.{k}" if k != "_root" else "definition": v for k, v in exc.errors.items()})

    @app.errorhandler(ApiError)
    def _api(exc):
        return jsonify(exc.body), exc.status

    @app.errorhandler(HTTPException)
    def _http(exc):
        return jsonify({"error": exc.description}), exc.code

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
