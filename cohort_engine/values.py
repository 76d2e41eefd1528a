"""Converting a definition's values to a stored type (docs/definition.md "Types"), shared by leaves and tags."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from .errors import EngineError
from .timewin import parse_local, to_utc_naive


def coerce_value(value, kind: str, prop: str, tz: ZoneInfo):
    """value as a number (float), string, boolean or time (naive UTC); EngineError bad_value if it is none."""
    try:
        if kind == "number":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "string":
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1"):
                return True
            if text in ("false", "0"):
                return False
            raise ValueError
        return to_utc_naive(parse_local(str(value), tz))
    except (TypeError, ValueError, OverflowError):
        # OverflowError: a time at the edge of the calendar (year 1) moved out of it by the zone.
        raise EngineError("bad_value", f"{value!r} is not a valid {kind} for property {prop!r}") from None
