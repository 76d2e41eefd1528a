"""Druid's error responses, as the embedded executor answers them."""

from __future__ import annotations


class DruidQueryError(Exception):
    """A query the embedded executor refuses; `body()` is Druid's legacy error object."""

    status = 500
    error = "Unknown exception"
    error_class = "java.lang.RuntimeException"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def body(self) -> dict:
        return {"error": self.error, "errorMessage": self.message, "errorClass": self.error_class, "host": None}


class BadQuery(DruidQueryError):
    """Malformed or invalid query JSON (HTTP 400)."""

    status = 400
    error = "Json parse failed"
    error_class = "com.fasterxml.jackson.databind.JsonMappingException"


class Unsupported(DruidQueryError):
    """A valid Druid feature the embedded executor does not implement (HTTP 501)."""

    status = 501
    error = "Unsupported operation"
    error_class = "java.lang.UnsupportedOperationException"


class UnknownType(BadQuery):
    """A type id Druid itself does not know (HTTP 400, as Jackson's polymorphic parse answers it)."""

    error_class = "com.fasterxml.jackson.databind.exc.InvalidTypeIdException"

    def __init__(self, path: str, kind, family: str, known):
        super().__init__(f"{path}: Could not resolve type id {kind!r} as a subtype of {family}:"
                         f" known type ids = [{', '.join(sorted(known))}]")


class ResourceLimitExceeded(DruidQueryError):
    """The query would exceed a configured limit (HTTP 400, Druid's ResourceLimitExceededException)."""

    status = 400
    error = "Resource limit exceeded"
    error_class = "org.apache.druid.query.ResourceLimitExceededException"


class QueryTimeout(DruidQueryError):
    """The query ran past its timeout (HTTP 504)."""

    status = 504
    error = "Query timeout"
    error_class = "org.apache.druid.query.QueryTimeoutException"


def require(spec: dict, field: str, path: str, kinds=None):
    """spec[field], or BadQuery naming path.field when it is missing or of the wrong JSON type."""
    if not isinstance(spec, dict):
        raise BadQuery(f"{path} must be a JSON object")
    if field not in spec or spec[field] is None:
        raise BadQuery(f"{path}.{field} is required")
    value = spec[field]
    if kinds is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in _tuple(kinds)):
        raise BadQuery(f"{path}.{field} has the wrong type ({type(value).__name__})")
    return value


def type_id(spec: dict, path: str, default=None):
    """spec["type"] as a type id string (default when absent); any other JSON type is a 400."""
    kind = spec.get("type", default)
    if kind is None or isinstance(kind, str):
        return kind
    raise BadQuery(f"{path}.type must be a string, not {type(kind).__name__}")


def _tuple(kinds):
    return kinds if isinstance(kinds, tuple) else (kinds,)
