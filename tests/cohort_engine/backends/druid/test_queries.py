"""The JSON each leaf and tag kind (and ID matching) becomes, against a hand-written fixture and Druid's documented query shapes."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cohort_engine.backends.druid.queries import Catalog, LeafQueries
from cohort_engine.backends.druid.settings import BackendSettingError, DruidSettings, public_backend
from cohort_engine.definition import parse_definition
from cohort_engine.errors import EngineError
from cohort_engine.tag_definition import parse_tag_definition

from .druid_shapes import check_query

FIXTURE = json.loads((Path(__file__).parent / "expected_queries.json").read_text())
TZ = ZoneInfo("Asia/Shanghai")
BASE = datetime(2024, 3, 13, 10, 0, tzinfo=TZ)
SETTINGS = DruidSettings.parse({
    "kind": "druid", "brokers": "http://broker.example:8082", "events": "events_ds", "profiles": "users_ds",
    "columns": {"events": {"paid": "boolean"}, "profiles": {"signup": {"column": "signup_ms", "kind": "time"}}}})
# What segmentMetadata would answer for the two datasources.
EVENT_TYPES = {"__time": "LONG", "distinct_id": "STRING", "event": "STRING", "amount": "DOUBLE", "channel": "STRING",
               "paid": "STRING", "level_at": "LONG"}
PROFILE_TYPES = {"__time": "LONG", "distinct_id": "STRING", "city": "STRING", "level": "LONG", "signup_ms": "LONG"}


@pytest.fixture(scope="module")
def queries():
    return LeafQueries(SETTINGS, Catalog(SETTINGS, EVENT_TYPES, PROFILE_TYPES), TZ, BASE)


def _leaf(raw):
    return parse_definition(raw)


@pytest.mark.parametrize("name", sorted(k for k in FIXTURE if not k.startswith("_")))
def test_each_leaf_kind_sends_the_documented_query(queries, name):
    case = FIXTURE[name]
    expected = case["query"]
    if "step" in case:
        got = queries.sequence_step(case["step"] if "filter" not in case["step"] else
                                    _leaf({"type": "sequence", "steps": [case["step"]],
                                           "window": case["window"]})["steps"][0],
                                    case["window"], case["how"], case.get("after"))
    elif "tag" in case:
        tag = parse_tag_definition(case["tag"])
        if tag["kind"] == "metric":
            got, at = queries.metric(tag)
            assert at == case["value_at"]  # where the value sits in the array rows [key, aggs..., posts...]
        else:
            got, _ = queries.first_last(tag)
    elif "match" in case:
        got = queries.match_profile(queries.catalog.profiles[case["match"]["property"]], case["match"]["texts"])
    elif case["leaf"]["type"] == "profile":
        got, complement = queries.profile(_leaf(case["leaf"]))
        assert complement is case["complement"]
    elif case.get("pairs"):
        got = queries.distinct_pairs(_leaf(case["leaf"]))
    else:
        got = queries.event(_leaf(case["leaf"]), complement=case["complement"])
    assert got == expected
    assert check_query(expected) == [], "the fixture itself must keep to Druid's documented shapes"


def test_the_shape_check_catches_what_druid_does_not_document():
    bad = dict(FIXTURE["event_count"]["query"], having={"type": "greaterThan", "aggregation": "value"},
               filter={"type": "bound", "dimension": "x", "ordering": "numeric", "lower": 3})
    problems = check_query(bad)
    assert "having: missing value" in problems and any("numeric bounds are strings" in p for p in problems)


def test_type_and_property_errors_match_the_embedded_backend(queries):
    with pytest.raises(EngineError) as caught:
        queries.profile(_leaf({"type": "profile", "property": "nope", "cmp": "eq", "values": ["x"]}))
    assert caught.value.code == "unknown_property" and "city" in caught.value.message
    with pytest.raises(EngineError) as caught:
        queries.profile(_leaf({"type": "profile", "property": "level", "cmp": "regex", "values": ["x"]}))
    assert caught.value.code == "type_mismatch"
    with pytest.raises(EngineError) as caught:
        queries.profile(_leaf({"type": "profile", "property": "level", "cmp": "gt", "values": ["abc"]}))
    assert caught.value.code == "bad_value"
    with pytest.raises(EngineError) as caught:
        queries.event(_leaf({"type": "event", "event": "pay", "agg": {"fn": "sum", "property": "channel"},
                             "window": {"last": 1}, "cmp": "gt", "values": [1]}), complement=False)
    assert caught.value.code == "type_mismatch"


def test_settings_are_validated_and_shown_without_the_password():
    raw = {"kind": "druid", "brokers": "h1:8082,https://h2", "events": "e", "username": "u", "password": "s3cret"}
    settings = DruidSettings.parse(raw)
    assert settings.addresses() == [("h1", 8082), ("h2", 443)]
    shown = public_backend(raw)
    assert shown["password_set"] is True and "s3cret" not in json.dumps(shown) and shown["username"] == "u"
    for bad, field in (({"events": "e"}, "brokers"), ({"brokers": "h:1"}, "events"),
                       ({"brokers": "h:1", "events": "e", "page_size": 0}, "page_size"),
                       ({"brokers": "h:1", "events": "e", "username": "u"}, "password"),
                       ({"brokers": "h:1", "events": "e", "columns": {"events": {"x": "date"}}}, "columns.events.x.kind"),
                       ({"brokers": "h:1", "events": "e", "brokerz": 1}, "brokerz")):
        with pytest.raises(BackendSettingError) as caught:
            DruidSettings.parse({"kind": "druid", **bad})
        assert caught.value.field == field
