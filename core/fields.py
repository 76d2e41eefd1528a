"""Marshmallow fields shared by the native API and the dialects (no Flask import)."""

from __future__ import annotations

import math
import re

from marshmallow import fields


def numeric(value) -> int | float | None:
    """A JSON number or a numeric string ("4", " 2.5 ") as a finite number within int64, else None.

    Vendors send counts both ways; float() alone would also read "nan", "inf" and "1e400".
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d{1,18}", text):
            return int(text)
        try:
            value = float(text)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value) and -2**63 <= value < 2**63:
        return value
    return None


class StrictBoolean(fields.Boolean):
    """A JSON boolean, or one of the spellings a vendor documents; marshmallow's Boolean reads "yes" as true."""

    default_error_messages = {
        "invalid": "must be true or false (a JSON boolean)",
        "invalid_spelling": "must be true or false (a JSON boolean, or one of {accepted})",
    }

    def __init__(self, *, spellings: dict[str, bool] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.spellings = dict(spellings or {})

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value in self.spellings:
            return self.spellings[value]
        if self.spellings:
            raise self.make_error("invalid_spelling", accepted=", ".join(repr(s) for s in self.spellings))
        raise self.make_error("invalid")
