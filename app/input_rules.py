"""App-wide input rules (docs/api.md): what any request may carry, checked before a view reads it.

JSON bodies are parsed by InputJSONProvider: nesting is bounded, numbers must be finite and text
must be storable (PostgreSQL refuses NUL and unpaired surrogates in jsonb and text). Path
variables, query parameters and headers get the same text check in check_request_text.
"""

from __future__ import annotations

import json
import math
import re

from flask import request
from flask.json.provider import DefaultJSONProvider
from werkzeug.routing import IntegerConverter

from app.errors import ApiError
from cohort_engine.definition import MAX_USER_KEY

# Deep enough for a definition at its own limit (32 levels, two JSON levels each) inside a body.
MAX_JSON_DEPTH = 100
# Ids are PostgreSQL integer (cohorts) or bigint (jobs) columns; a longer path id matches no route.
MAX_PATH_DIGITS = 18
MAX_PATH_INT = 10**MAX_PATH_DIGITS - 1
# PostgreSQL text and jsonb cannot hold NUL; a lone surrogate cannot be encoded as UTF-8 at all.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE_MESSAGE = "must not contain NUL (\\u0000) or unpaired surrogate (\\ud800-\\udfff) characters"
NOT_FINITE_MESSAGE = "must be a finite number (NaN, Infinity and numbers beyond 1.8e308 are not JSON numbers)"


def input_error(path: str, message: str) -> ApiError:
    return ApiError(400, "invalid input; nothing was written", errors={path or "_body": [message]})


def user_key_arg(key: str) -> str:
    """A user key named in a URL path, or a 400: no stored key is longer than an ids leaf or upload allows."""
    if len(key) > MAX_USER_KEY:
        raise input_error("user_key", f"a user key has at most {MAX_USER_KEY} characters")
    return key


def _path(trail) -> str:
    """The field path of a trail (parent trail, key), built only when an error names it."""
    keys = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    path = ""
    for key in reversed(keys):
        if isinstance(key, int):
            path += f"[{key}]"
        else:
            key = key.encode("unicode_escape", "backslashreplace").decode() if UNSTORABLE.search(key) else key
            path = f"{path}.{key}" if path else key
    return path


def check_json_value(value) -> None:
    """Raise a 400 ApiError naming the first path nested too deep, not finite or not storable as text."""
    stack = [(value, None, 1)]
    while stack:
        node, trail, depth = stack.pop()
        if isinstance(node, dict | list) and depth > MAX_JSON_DEPTH:
            raise input_error(_path(trail), f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(node, dict):
            for key, sub in node.items():
                if UNSTORABLE.search(key):
                    raise input_error(_path((trail, key)), "field names " + UNSTORABLE_MESSAGE)
                stack.append((sub, (trail, key), depth + 1))
        elif isinstance(node, list):
            stack.extend((sub, (trail, i), depth + 1) for i, sub in enumerate(node))
        elif isinstance(node, str):
            if UNSTORABLE.search(node):
                raise input_error(_path(trail), UNSTORABLE_MESSAGE)
        elif isinstance(node, float) and not math.isfinite(node):
            raise input_error(_path(trail), NOT_FINITE_MESSAGE)


class InputJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, whose loads (behind every request.get_json) also applies check_json_value."""

    def loads(self, s, **kwargs):
        try:
            value = json.loads(s, **kwargs)
        except RecursionError:
            # The C parser recurses per level; far past our limit it runs out of stack.
            raise input_error("", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
        check_json_value(value)
        return value


def check_request_text() -> None:
    """Refuse NUL in path variables, query parameters and headers (before_request, app-wide)."""
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str) and UNSTORABLE.search(value):
            raise input_error(name, UNSTORABLE_MESSAGE)
    for name, value in request.args.items(multi=True):
        if UNSTORABLE.search(name) or UNSTORABLE.search(value):
            raise input_error(name.encode("unicode_escape").decode(), UNSTORABLE_MESSAGE)
    for name, value in request.headers.items():
        if UNSTORABLE.search(value):
            raise input_error(f"header {name}", UNSTORABLE_MESSAGE)


class BoundedIntConverter(IntegerConverter):
    """Flask's <int:...>, at most 18 digits, so that every id it matches fits a bigint column."""

    # Bounded in the pattern, not with max=: a converter that refuses a matched value makes
    # werkzeug answer 405 with a wrong Allow header instead of 404.
    regex = rf"\d{{1,{MAX_PATH_DIGITS}}}"


def init_app(app) -> None:
    """Install the rules; before any blueprint is registered, so that its routes use the bounded converter."""
    app.url_map.converters["int"] = BoundedIntConverter
    app.json = InputJSONProvider(app)
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = app.config["SETTINGS"].max_body_bytes
    app.before_request(check_request_text)
