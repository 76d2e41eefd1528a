"""The leaf-result cache: keys with resolved windows, the byte bound, and reuse over a real embedded store.

Backend calls are counted by a wrapper around the real embedded session (every call still runs its
DuckDB query); answers are checked against the brute-force reference.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pyroaring import BitMap, FrozenBitMap

from cohort_engine import leafcache
from cohort_engine.config import EngineConfig
from cohort_engine.definition import parse_definition
from cohort_engine.evaluate import EvalContext, evaluate
from cohort_engine.leafcache import LeafCache, entry_bytes, leaf_key
from cohort_engine.project import ProjectEngine

from .reference import Dataset, create_project, load_into, reference_outcome, write_parquet

USER_KINDS = {"city": "string", "signup": "time"}
EVENT_KINDS = {"item": "string"}
BASE = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def pays(window: dict, at_least: int = 1) -> dict:
    return {"type": "event", "event": "pay", "agg": {"fn": "count"}, "window": window, "cmp": "gte",
            "values": [at_least]}


LAST_WEEK = {"last": 7, "offset": 0, "unit": "day"}
# LAST_WEEK at BASE, written as dates: the same bounds, so the same key.
LAST_WEEK_AS_DATES = {"start": "2024-03-04", "end": "2024-03-10"}
PARIS = {"type": "profile", "property": "city", "cmp": "eq", "values": ["Paris"]}


class CountingSession:
    """The real session of the store, recording each leaf that reaches it."""

    def __init__(self, session, snapshot_id: bool = True):
        self.inner = session
        self.calls: list[str] = []
        self.names_snapshot = snapshot_id

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def snapshot_id(self):
        return self.inner.snapshot_id() if self.names_snapshot else None

    def profile(self, leaf, ctx):
        self.calls.append("profile")
        return self.inner.profile(leaf, ctx)

    def event(self, leaf, ctx):
        self.calls.append("event")
        return self.inner.event(leaf, ctx)

    def sequence(self, leaf, ctx):
        self.calls.append("sequence")
        return self.inner.sequence(leaf, ctx)


class Shop:
    """A small project on the embedded store, evaluated through counting sessions and the reference."""

    def __init__(self, engine_config, directory: Path):
        self.tz = ZoneInfo("UTC")
        self.directory = directory
        self.data = Dataset(
            profiles=[{"key": "a", "city": "Paris", "signup": utc("2024-03-10T06:00:00")},
                      {"key": "b", "city": "Oslo", "signup": utc("2024-03-01T00:00:00")},
                      {"key": "c", "city": "Paris", "signup": None}],
            events=[{"key": "a", "event": "pay", "time": utc("2024-03-05T10:00:00"), "item": "x"},
                    {"key": "b", "event": "pay", "time": utc("2024-03-09T10:00:00"), "item": "y"},
                    {"key": "d", "event": "pay", "time": utc("2024-03-11T10:00:00"), "item": "x"},
                    {"key": "d", "event": "view", "time": utc("2024-03-06T10:00:00"), "item": None}],
            user_kinds=USER_KINDS, event_kinds=EVENT_KINDS)
        self.engine = ProjectEngine(engine_config, create_project(engine_config.database_url, "UTC"))
        load_into(self.engine, self.data, directory / "input")

    def add_events(self, events: list[dict]) -> None:
        """A new ingest: a new store snapshot."""
        self.data.events.extend(events)
        path = self.directory / f"more-{len(self.data.events)}.parquet"
        write_parquet(events, EVENT_KINDS, {"key": "distinct_id", "event": "event", "time": "time"}, path)
        self.engine.ingest_events(path)

    def run(self, raw: dict, base: datetime = BASE, cache: LeafCache | None = None, names_snapshot: bool = True,
            load_cohort=None) -> tuple[set[str], CountingSession, object]:
        """(member keys, the counting session, the Result) of one evaluation on a new session."""
        session = CountingSession(self.engine.open_session(), names_snapshot)
        try:
            ctx = EvalContext(session=session, tz=self.tz, base_time=base, encode_keys=self.engine.encode,
                              load_cohort=load_cohort, leaf_cache=cache, project_id=self.engine.project_id)
            result = evaluate(parse_definition(raw), ctx)
        finally:
            session.close()
        return set(self.engine.iter_keys(result.bitmap)), session, result

    def expected(self, raw: dict, base: datetime = BASE, cohorts=None) -> set[str]:
        error, members = reference_outcome(self.data, self.tz, parse_definition(raw), base, cohorts)
        assert error is None
        return members


@pytest.fixture
def shop(engine_config, tmp_path) -> Shop:
    return Shop(engine_config, tmp_path)


# -- keys ------------------------------------------------------------------------------------------

def test_a_relative_window_and_its_dates_share_a_key_and_other_frames_do_not():
    utc_zone, paris = ZoneInfo("UTC"), ZoneInfo("Europe/Paris")
    assert leaf_key(pays(LAST_WEEK), utc_zone, BASE) == leaf_key(pays(LAST_WEEK_AS_DATES), utc_zone, BASE)
    # Later the same day: the same whole days. The next day: the window has moved.
    assert leaf_key(pays(LAST_WEEK), utc_zone, BASE) == leaf_key(pays(LAST_WEEK), utc_zone, BASE + timedelta(hours=6))
    assert leaf_key(pays(LAST_WEEK), utc_zone, BASE) != leaf_key(pays(LAST_WEEK), utc_zone, BASE + timedelta(days=1))
    # The same dates are other instants in another zone.
    assert leaf_key(pays(LAST_WEEK_AS_DATES), utc_zone, BASE) != leaf_key(pays(LAST_WEEK_AS_DATES), paris, BASE)
    assert leaf_key(pays(LAST_WEEK), utc_zone, BASE) != leaf_key(pays(LAST_WEEK, 2), utc_zone, BASE)
    # A duration counts back from the base time itself, to the microsecond.
    within = {"type": "profile", "property": "signup", "cmp": "within_last", "values": [1, "day"]}
    assert leaf_key(within, utc_zone, BASE) != leaf_key(within, utc_zone, BASE + timedelta(microseconds=1))
    before = {"type": "profile", "property": "signup", "cmp": "before_last", "values": [1, "day"]}
    assert leaf_key(before, utc_zone, BASE) != leaf_key(before, utc_zone, BASE + timedelta(minutes=1))
    in_filter = {**pays(LAST_WEEK), "filter": {"property": "due", "cmp": "within_last", "values": [2, "hour"]}}
    assert leaf_key(in_filter, utc_zone, BASE) != leaf_key(in_filter, utc_zone, BASE + timedelta(minutes=1))


# -- the LRU ---------------------------------------------------------------------------------------

def test_the_byte_bound_evicts_the_least_recently_used():
    a, b, c = BitMap(range(0, 5000)), BitMap(range(0, 100000, 3)), BitMap(range(7, 9000, 2))
    sizes = {name: entry_bytes(("p", name), bitmap) for name, bitmap in (("a", a), ("b", b), ("c", c))}
    cache = LeafCache(sizes["a"] + sizes["b"] + sizes["c"] - 1)
    cache.put(("p", "a"), a)
    cache.put(("p", "b"), b)
    assert cache.get(("p", "a")) == a  # a is now the most recently used
    cache.put(("p", "c"), c)
    assert cache.get(("p", "b")) is None
    assert cache.get(("p", "a")) == a and cache.get(("p", "c")) == c
    assert cache.bytes == sizes["a"] + sizes["c"] <= cache.max_bytes
    assert cache.evictions == 1
    # An answer larger than the whole bound is not kept (it would only flush the rest).
    small = LeafCache(sizes["a"] - 1)
    small.put(("p", "a"), a)
    assert len(small) == 0 and small.bytes == 0


def test_a_zero_bound_disables_and_entries_are_frozen_copies():
    off = LeafCache(0)
    off.put(("p", "a"), BitMap([1]))
    assert off.get(("p", "a")) is None and not off.enabled
    cache = LeafCache(2**20)
    mine = BitMap([1, 2, 3])
    kept = cache.put(("p", "a"), mine)
    mine.add(4)
    assert isinstance(kept, FrozenBitMap) and cache.get(("p", "a")) == BitMap([1, 2, 3])
    with pytest.raises(AttributeError):
        kept.add(5)


# -- reuse over a real store -----------------------------------------------------------------------

def test_repeated_leaves_are_computed_once_in_an_evaluation(shop):
    raw = {"op": "and", "children": [
        {"op": "or", "children": [pays(LAST_WEEK), PARIS]},
        {"op": "not", "child": {"op": "and", "children": [pays(LAST_WEEK_AS_DATES), PARIS]}},
        {"op": "or", "children": [pays(LAST_WEEK), {"op": "not", "child": PARIS}]},
    ]}
    members, session, result = shop.run(raw)  # no cache across evaluations: reuse within this one only
    assert members == shop.expected(raw) == {"b"}
    assert sorted(session.calls) == ["event", "profile"]
    assert [t.get("reused") for t in result.timings] == [None, None, "evaluation", "evaluation",
                                                         "evaluation", "evaluation"]


def test_the_process_cache_serves_unchanged_data_and_a_new_ingest_invalidates_it(shop):
    cache = LeafCache(2**20)
    raw = {"op": "and", "children": [pays(LAST_WEEK), {"op": "not", "child": PARIS}]}
    first, session, _ = shop.run(raw, cache=cache)
    assert first == shop.expected(raw) == {"b"} and len(session.calls) == 2
    # A re-run (a cron fire later the same day, a refresh): the same resolved windows, no query.
    again, session, result = shop.run(raw, BASE + timedelta(hours=3), cache=cache)
    assert again == first and session.calls == []
    assert {t.get("reused") for t in result.timings} == {"process"}
    # The next day the window has moved: computed again, the profile leaf still reused.
    moved, session, _ = shop.run(raw, BASE + timedelta(days=1), cache=cache)
    assert moved == shop.expected(raw, BASE + timedelta(days=1)) and session.calls == ["event"]
    # A new ingest is a new snapshot: every leaf is computed again, over the new data.
    shop.add_events([{"key": "c", "event": "pay", "time": utc("2024-03-08T10:00:00"), "item": "z"},
                     {"key": "e", "event": "pay", "time": utc("2024-03-09T10:00:00"), "item": "z"}])
    after, session, _ = shop.run(raw, cache=cache)
    assert after == shop.expected(raw) == {"b", "e"} and len(session.calls) == 2


def test_durations_key_on_the_base_time(shop):
    cache = LeafCache(2**20)
    raw = {"type": "profile", "property": "signup", "cmp": "within_last", "values": [6, "hour"]}
    for base in (BASE, BASE, BASE + timedelta(hours=1), BASE + timedelta(hours=6, seconds=1)):
        members, _, _ = shop.run(raw, base, cache=cache)
        assert members == shop.expected(raw, base)
    assert cache.hits == 1 and cache.misses == 3


def test_a_session_that_names_no_snapshot_is_not_cached_across_evaluations(shop):
    cache = LeafCache(2**20)
    for _ in range(2):
        members, session, _ = shop.run(pays(LAST_WEEK), cache=cache, names_snapshot=False)
        assert members == shop.expected(pays(LAST_WEEK)) == {"a", "b"} and session.calls == ["event"]
    assert len(cache) == 0


def test_cohort_leaves_are_reused_within_an_evaluation_only(shop):
    cache = LeafCache(2**20)
    versions = {"now": ["a"]}
    loads = []

    def load_cohort(cohort_id):
        loads.append(cohort_id)
        return BitMap(shop.engine.encode(versions["now"]).tolist())

    raw = {"op": "or", "children": [{"type": "cohort", "cohort_id": 7}, pays(LAST_WEEK, 1),
                                    {"op": "and", "children": [{"type": "cohort", "cohort_id": 7}, PARIS]}]}
    members, _, _ = shop.run(raw, cache=cache, load_cohort=load_cohort)
    assert members == shop.expected(raw, cohorts={7: {"a"}}) == {"a", "b"} and loads == [7]
    # A new version of the cohort, same snapshot: the cohort leaf is read again.
    versions["now"] = ["d"]
    members, session, _ = shop.run(raw, cache=cache, load_cohort=load_cohort)
    assert members == shop.expected(raw, cohorts={7: {"d"}}) == {"a", "b", "d"} and loads == [7, 7]
    assert session.calls == []


def test_results_are_the_callers_to_change(shop):
    cache = LeafCache(2**20)
    _, _, first = shop.run(pays(LAST_WEEK), cache=cache)
    _, session, second = shop.run(pays(LAST_WEEK), cache=cache)
    assert session.calls == [] and type(second.bitmap) is BitMap
    second.bitmap.add(123456)
    second.bitmap |= BitMap([7, 8])
    _, _, third = shop.run({"op": "and", "children": [pays(LAST_WEEK)]}, cache=cache)
    assert type(third.bitmap) is BitMap and third.bitmap == first.bitmap


def test_project_engine_uses_this_process_cache_unless_disabled(engine_config, tmp_path):
    leafcache.clear_shared()
    shop = Shop(engine_config, tmp_path)
    raw = parse_definition({"op": "and", "children": [pays(LAST_WEEK), PARIS]})
    first = shop.engine.compute(raw, base_time=BASE)
    second = shop.engine.compute(raw, base_time=BASE)
    assert second.bitmap == first.bitmap and [t.get("reused") for t in second.timings] == ["process", "process"]
    off = ProjectEngine(EngineConfig(**{**vars(engine_config), "leaf_cache_bytes": 0}), shop.engine.name)
    assert off.leaf_cache is None
    assert all("reused" not in t for t in off.compute(raw, base_time=BASE).timings)


def test_a_tag_reuses_the_leaves_a_cohort_computed(engine_config, tmp_path):
    from cohort_engine.tag_definition import parse_tag_definition

    leafcache.clear_shared()
    shop = Shop(engine_config, tmp_path)
    shop.engine.compute(parse_definition({"op": "and", "children": [pays(LAST_WEEK), PARIS]}), base_time=BASE)
    tag = parse_tag_definition({"kind": "values", "type": "string", "values": [
        {"value": "payer", "definition": pays(LAST_WEEK_AS_DATES)},
        {"value": "parisian", "definition": {"op": "not", "child": {"op": "not", "child": PARIS}}}]})
    result = shop.engine.compute_tag(tag, base_time=BASE)
    assert [t.get("reused") for t in result.timings] == ["process", "process"]
    by_uid = result.column.as_dict()
    uids = sorted(by_uid)
    values = dict(zip(shop.engine.iter_keys(BitMap(uids)), [by_uid[u] for u in uids], strict=True))
    assert values == {"a": "payer", "b": "payer", "c": "parisian"}
