"""Validation of tag definitions (docs/definition.md "Tags"): types fixed at save, errors name the field."""

from __future__ import annotations

import pytest

from cohort_engine.definition import DefinitionError, check_no_cycle
from cohort_engine.tag_definition import parse_tag_definition

EVERYONE = {"op": "not", "child": {"type": "ids", "keys": []}}
LAST = {"last": 30}


def errors_of(definition) -> dict[str, list[str]]:
    with pytest.raises(DefinitionError) as caught:
        parse_tag_definition(definition)
    return caught.value.errors


def values(*vals, **extra) -> dict:
    return {"kind": "values", "values": [{"value": v, "definition": EVERYONE} for v in vals], **extra}


def test_value_types_are_inferred_or_given():
    assert parse_tag_definition(values("a", "b"))["type"] == "string"
    assert parse_tag_definition(values(1, 2.5))["type"] == "number"
    assert parse_tag_definition(values(True, False))["type"] == "boolean"
    assert parse_tag_definition(values("2024-01-01", "2024-02-01T10:00:00", type="time"))["type"] == "time"
    metric = {"kind": "metric", "event": "pay", "window": LAST}
    assert parse_tag_definition(metric)["type"] == "number"
    assert parse_tag_definition({**metric, "buckets": [{"label": "x"}]})["type"] == "string"
    assert parse_tag_definition({"kind": "first_last", "which": "first", "event": "*", "window": LAST,
                                 "property": "time"})["type"] == "time"
    assert "type" not in parse_tag_definition({"kind": "first_last", "which": "last", "event": "*", "window": LAST,
                                               "property": "city"})


@pytest.mark.parametrize("definition, path", [
    ({"kind": "other"}, "kind"),
    (values("a", 1), "type"),
    (values("a", "a"), "values"),
    (values(), "values"),
    (values("a", default=3), "default"),
    (values("not a time", type="time"), "values[0].value"),
    (values(float("inf")), "values[0].value"),
    ({"kind": "values", "values": [{"value": "a", "definition": {"type": "nope"}}]}, "values[0].definition.type"),
    ({"kind": "metric", "event": "pay", "window": LAST, "buckets": [{"label": "a", "low": 3, "high": 3}]},
     "buckets[0].high"),
    ({"kind": "metric", "event": "pay", "window": LAST,
      "buckets": [{"label": "a", "high": 5}, {"label": "b", "low": 4}]}, "buckets[1].low"),
    ({"kind": "metric", "event": "pay", "window": LAST, "buckets": [{"label": "a", "low": 1}, {"label": "b", "low": 4}]},
     "buckets[1].low"),
    ({"kind": "metric", "event": "pay", "window": LAST, "buckets": [{"label": "a", "high": 1}, {"label": "a", "low": 4}]},
     "buckets"),
    ({"kind": "metric", "event": "pay", "window": LAST, "buckets": [{"label": "a"}], "default": 0}, "default"),
    ({"kind": "metric", "event": "pay", "window": {"last": 0}}, "window.last"),
    ({"kind": "metric", "event": "pay", "window": LAST, "agg": {"fn": "sum"}}, "agg.property"),
    ({"kind": "first_last", "which": "middle", "event": "*", "window": LAST, "property": "x"}, "which"),
    ({"kind": "first_last", "which": "first", "event": "*", "window": LAST, "property": "time", "type": "string"},
     "type"),
    ({"kind": "first_last", "which": "first", "event": "*", "window": LAST, "property": "x", "default": "a"}, "type"),
    ({"kind": "import", "type": "color"}, "type"),
])
def test_errors_name_the_field(definition, path):
    assert path in errors_of(definition)


def test_tag_leaf_and_cycles_through_tags():
    leaf = {"type": "tag", "tag_id": 2, "cmp": "eq", "values": []}
    assert "values[0].definition.values" in errors_of(
        {"kind": "values", "values": [{"value": "a", "definition": leaf}]})
    uses_tag_2 = {"type": "tag", "tag_id": 2, "cmp": "is_set"}
    tag_2_uses_1 = values("x", "y")
    tag_2_uses_1["values"][0]["definition"] = {"type": "cohort", "cohort_id": 1}
    stored = {1: {"type": "ids", "keys": []}, 2: parse_tag_definition(tag_2_uses_1)}
    with pytest.raises(DefinitionError, match="cycle: 1 -> 2 -> 1"):
        check_no_cycle(1, uses_tag_2, stored.get)
    check_no_cycle(3, uses_tag_2, stored.get)
