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


# -- input a client can send that must be refused at save, never fail in a job (issue 8) ----------


@pytest.mark.parametrize(("tree", "path"), [
    ({"op": "and", "children": [5]}, "children[0]"),
    ({"op": "and", "children": 5}, "children"),
    ({"op": "or", "children": [None, "x"]}, "children[0]"),
    ({"op": "not", "child": 5}, "child"),
    ({"op": "not", "child": [pays()]}, "child"),
    (pays(filter={"op": "and", "children": [5]}), "filter.children[0]"),
    ({"type": {"a": 1}}, "type"),
    ({"type": ["event"]}, "type"),
])
def test_non_object_nodes_are_errors_not_type_errors(tree, path):
    assert path in errors_of(tree)


def nested_not(levels: int) -> dict:
    tree = pays()
    for _ in range(levels):
        tree = {"op": "not", "child": tree}
    return tree


def test_depth_limit_counts_not_chains_and_filter_groups():
    parse_definition(nested_not(31))
    assert "nested deeper than 32 levels" in errors_of(nested_not(40))["_root"][0]
    # Far deeper than Python's recursion limit: refused by the iterative depth check, not a RecursionError.
    assert "nested deeper than 32 levels" in errors_of(nested_not(5000))["_root"][0]
    deep_filter = {"property": "amount", "cmp": "gt", "values": [1]}
    for _ in range(40):
        deep_filter = {"op": "and", "children": [deep_filter]}
    assert "nested deeper" in errors_of(pays(filter=deep_filter))["_root"][0]


@pytest.mark.parametrize(("tree", "path", "fragment"), [
    (pays(window={"last": 10**12}), "window.last", "100 years"),
    (pays(window={"last": 1, "offset": 10**9}), "window.last", "100 years"),
    (pays(window={"last": 1300, "unit": "month"}), "window.last", "<= 1200"),
    (profile("within_last", [10**15, "day"]), "values", "100 years"),
    (profile("before_last", [10**8, "minute"]), "values", "100 years"),
    (pays(window={"start": "0001-01-01", "end": "9999-12-31"}), "window.start", "1000-01-01"),
    (pays(window={"start": "2024-01-01", "end": "9999-12-31"}), "window.end", "9998-12-31"),
    (pays(window={"start": "0001-01-01T00:00:00", "end": "2024-01-01T00:00:00"}), "window.start", "1000-01-01"),
    (profile("date_between", ["0001-01-01", "2024-01-01"]), "values", "outside"),
    (profile("eq", [2**64]), "values", "2^63"),
    (profile("gt", [1e20]), "values", "2^63"),
    (pays(values=[-1e300]), "values", "2^63"),
    ({"type": "cohort", "cohort_id": 2**31}, "cohort_id", "less than or equal"),
])
def test_windows_durations_and_numbers_are_bounded(tree, path, fragment):
    errors = errors_of(tree)
    assert path in errors and any(fragment in m for m in errors[path]), errors


def test_bounds_at_their_limits_are_accepted():
    parse_definition(pays(window={"last": 36600}))
    parse_definition(pays(window={"start": "1000-01-01", "end": "9998-12-31"}))
    parse_definition(profile("within_last", [100 * 12, "month"]))


@pytest.mark.parametrize("pattern", [r"(a)\1", "(?=a)b", "(?<!a)b", r"a\Z", "a{1001}", "["])
def test_regex_is_checked_with_the_engines_re2_dialect(pattern):
    errors = errors_of(profile("regex", [pattern]))
    assert "RE2" in errors["values"][0], errors


def test_regex_features_re2_has_are_accepted():
    for pattern in (r"^\d+$", "(?i)vip", "(?P<name>a)b", "[[:alpha:]]+"):
        parse_definition(profile("regex", [pattern]))
