"""core.fields: the number reading every dialect shares."""

from __future__ import annotations

import pytest

from core.fields import numeric


@pytest.mark.parametrize(("value", "expected"), [
    (4, 4), (2.5, 2.5), ("4", 4), (" -12 ", -12), ("2.5", 2.5), ("1e3", 1000.0), (str(10**17), 10**17),
])
def test_numbers_and_numeric_strings_are_read(value, expected):
    assert numeric(value) == expected and type(numeric(value)) is type(expected)


@pytest.mark.parametrize("value", [True, False, None, "", "abc", "nan", "inf", "-inf", "1e400", 2**63, float(2**63),
                                   [1], {"a": 1}, "1 2"])
def test_anything_else_is_not_a_number(value):
    assert numeric(value) is None
