"""Validation of the canonical definition: errors name the path, comparators check their arity."""

from __future__ import annotations

import pytest

from cohort_engine.definition import DefinitionError, check_no_cycle, parse_definition

LAST_WEEK = {"last": 7}


def errors_of(tree) -> dict[str, list[str]]:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(tree)
    return caught.value.errors


def profile(cmp: str, values: list) -> dict:
    return {"type": "profile", "property": "level", "cmp": cmp, "values": values}


def pays(**overrides) -> dict:
    return {"type": "event", "event": "pay", "window": LAST_WEEK, "cmp": "gte", "values": [1], **overrides}


def test_error_paths_name_the_nested_field():
    tree = {"op": "and", "children": [{"type": "ids", "keys": ["a"]},
                                      {"op": "not", "child": pays(window={"last": 0})}]}
    assert errors_of(tree) == {"children[1].child.window.last": ["must be >= 1"]}
    tree = pays(filter={"op": "or", "children": [{"property": "x", "cmp": "is_set"},
                                                   {"property": "x", "cmp": "eq", "values": []}]})
    assert errors_of(tree) == {"filter.children[1].values": ["eq needs at least one value"]}
    tree = {"type": "sequence", "window": LAST_WEEK, "steps": [{"event": "a"}, {"event": ""}]}
    assert list(errors_of(tree)) == ["steps[1].event"]
    assert list(errors_of({"type": "ids", "keys": ["ok", ""]})) == ["keys[1]"]
    assert errors_of({"op": "not", "child": {"op": "xor"}}) == {"child.op": ["must be one of: and, or, not"]}


def test_message_text_joins_paths():
    with pytest.raises(DefinitionError, match=r"^window\.last: must be >= 1$"):
        parse_definition(pays(window={"last": 0}))


@pytest.mark.parametrize("tree, path", [
    ({**profile("eq", [1]), "extra": 1}, "extra"),
    ({"op": "not", "child": {"type": "ids", "keys": []}, "children": []}, "children"),
    (pays(window={"last": 2, "unit": "day", "size": 3}), "window.size"),
    (pays(agg={"fn": "count", "how": "fast"}), "agg.how"),
    (pays(filter={"property": "x", "cmp": "is_set", "typo": 1}), "filter.typo"),
    ({"type": "sequence", "window": LAST_WEEK, "steps": [{"event": "a", "when": 1}]}, "steps[0].when"),
])
def test_unknown_fields_are_rejected(tree, path):
    assert errors_of(tree) == {path: ["unknown field."]}


def test_missing_or_wrong_node_kind():
    assert errors_of([1]) == {"_root": ["must be an object"]}
    assert list(errors_of({"type": "segment"})) == ["type"]
    assert list(errors_of({"type": "profile", "cmp": "eq", "values": [1]})) == ["property"]
    assert list(errors_of({"op": "or", "children": []})) == ["children"]
    assert list(errors_of({**profile("eq", [1]), "cmp": "like"})) == ["cmp"]


def test_nesting_depth_is_limited():
    tree = {"type": "ids", "keys": ["a"]}
    for _ in range(40):
        tree = {"op": "not", "child": tree}
    assert errors_of(tree) == {"_root": ["nested deeper than 32 levels"]}


@pytest.mark.parametrize("cmp, good, bad", [
    ("eq", [[1], [1, "2", True]], [[]]),
    ("ne", [["a", "b"]], [[]]),
    ("gt", [[1], ["2024-01-01"]], [[], [1, 2]]),
    ("lte", [[1.5]], [[1, 2]]),
    ("between", [[1, 2], [2, 2], ["a", "b"]], [[1], [1, 2, 3], [3, 1]]),
    ("contains", [["x"], [""]], [[], [1], ["a", "b"]]),
    ("not_contains", [["x"]], [[2]]),
    ("starts_with", [["x"]], [[]]),
    ("ends_with", [["x"]], [["x", "y"]]),
    ("regex", [["^a.*b$"]], [["("], [1]]),
    ("is_true", [[]], [[True]]),
    ("is_false", [[]], [[1]]),
    ("is_set", [[]], [["x"]]),
    ("not_set", [[]], [["x"]]),
    ("is_empty", [[]], [[""]]),
    ("not_empty", [[]], [[""]]),
    ("date_between", [["2024-01-01", "2024-01-01"]], [["2024-01-02", "2024-01-01"], ["2024-01-01"], ["soon", "later"]]),
    ("within_last", [[0, "minute"], [3, "month"]], [[3], [-1, "day"], [1, "year"], ["1", "day"], [True, "day"]]),
    ("before_last", [[2, "hour"], [1, "week"]], [[2, "fortnight"], [1.5, "day"]]),
])
def test_comparator_arity(cmp, good, bad):
    for values in good:
        parse_definition(profile(cmp, values))
    for values in bad:
        assert list(errors_of(profile(cmp, values))) == ["values"], values
    assert list(errors_of(profile(cmp, [None] if cmp not in ("is_set",) else ["x"]))) == ["values"]


def test_aggregate_rules():
    assert errors_of(pays(agg={"fn": "sum"})) == {"agg.property": ["sum needs a property"]}
    assert errors_of(pays(values=["1"])) == {"values": ["aggregate comparisons take numbers"]}
    assert list(errors_of(pays(cmp="contains", values=["a"]))) == ["cmp"]
    assert list(errors_of(pays(agg={"fn": "median", "property": "p"}))) == ["agg.fn"]
    parsed = parse_definition(pays(window={"last": 2}))
    assert parsed["agg"] == {"fn": "count"}
    assert parsed["window"] == {"last": 2, "offset": 0, "unit": "day"}


@pytest.mark.parametrize("window, path", [
    ({"last": 0}, "window.last"),
    ({"last": 1, "offset": -1}, "window.offset"),
    ({"last": 1, "unit": "year"}, "window.unit"),
    ({"last": "3"}, "window.last"),
    ({"start": "2024-01-02", "end": "2024-01-01"}, "window.end"),
    ({"start": "2024-01-02T10:00:00", "end": "2024-01-02T10:00:00"}, "window.end"),
    ({"start": "2024-01-02", "end": "2024-01-03T00:00:00"}, "window.end"),
    ({"start": "02/01/2024", "end": "2024-01-03"}, "window.start"),
    ({"start": "2024-01-02T10:00:00+08:00", "end": "2024-01-03T00:00:00"}, "window.start"),
    ({"start": "2024-01-02"}, "window.end"),
    ("last week", "window"),
])
def test_bad_windows(window, path):
    assert list(errors_of(pays(window=window))) == [path]


def test_good_windows():
    for window in ({"start": "2024-01-02", "end": "2024-01-02"},
                   {"start": "2024-01-02T10:00", "end": "2024-01-02T10:00:01"},
                   {"last": 3, "offset": 2, "unit": "month"}):
        parse_definition(pays(window=window))


def stored(definitions: dict[int, dict]):
    return definitions.get


def refers(*ids: int) -> dict:
    return {"op": "or", "children": [{"type": "cohort", "cohort_id": i} for i in ids]}


def test_cycle_direct():
    with pytest.raises(DefinitionError, match="cycle: 1 -> 1"):
        check_no_cycle(1, refers(1), stored({1: refers(1)}))


def test_cycle_indirect():
    definitions = {1: refers(2), 2: refers(3), 3: refers(1)}
    with pytest.raises(DefinitionError, match="cycle: 1 -> 2 -> 3 -> 1"):
        check_no_cycle(1, refers(2), stored(definitions))


def test_missing_cohort_is_an_error():
    with pytest.raises(DefinitionError, match="cohort 7 does not exist"):
        check_no_cycle(1, refers(2), stored({2: refers(7)}))
    with pytest.raises(DefinitionError, match="cohort 4 does not exist"):
        check_no_cycle(None, refers(4), stored({}))


def test_shared_references_are_not_cycles():
    # 1 -> 2 -> 4 and 1 -> 3 -> 4: a diamond, not a cycle.
    definitions = {2: refers(4), 3: refers(4), 4: {"type": "ids", "keys": ["a"]}}
    check_no_cycle(1, refers(2, 3), stored(definitions))
    check_no_cycle(None, refers(2, 3), stored(definitions))
    check_no_cycle(1, {"type": "ids", "keys": []}, stored({}))
