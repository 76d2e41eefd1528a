"""The event store behind `cohorts ingest`: formats, columns, types, time zones, upserts, rejections."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohort_engine.backends.embedded.store import IngestError
from cohort_engine.project import ProjectEngine
from tests.conftest import set_timezone

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _engine(engine_config, project, database_url=None, tz: str | None = None) -> ProjectEngine:
    if tz:
        set_timezone(database_url, project[0], tz)
    return ProjectEngine(engine_config, project[0])


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    return _write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _events(engine: ProjectEngine, columns: str = "") -> list[tuple]:
    """(key, event, utc time, *columns) for every stored event, sorted."""
    con = engine.store.snapshot().connect()
    try:
        rows = con.execute(f"SELECT uid, event, time{', ' + columns if columns else ''} FROM events").fetchall()
    finally:
        con.close()
    return sorted((_key(engine, r[0]), *r[1:]) for r in rows)


def _users(engine: ProjectEngine, columns: str) -> dict[str, tuple]:
    con = engine.store.snapshot().connect()
    try:
        rows = con.execute(f"SELECT uid, {columns} FROM users").fetchall()
    finally:
        con.close()
    return {_key(engine, r[0]): tuple(r[1:]) for r in rows}


def _key(engine: ProjectEngine, uid: int) -> str:
    return next(engine.iter_keys([uid]))


def _utc(*args) -> datetime:
    return datetime(*args)


def test_csv_jsonl_and_parquet_events_are_stored_row_for_row(engine_config, project, tmp_path):
    engine = _engine(engine_config, project)
    _write(tmp_path / "a.csv", "distinct_id,event,time,price\n"
                               "u1,pay,2024-03-01 08:00:00,1.5\n"
                               "\"u,2\",pay,2024-03-01 09:30:00,2\n"
                               "u3,login,2024-03-02 00:00:00,\n")
    _jsonl(tmp_path / "b.jsonl", [
        {"distinct_id": "u1", "event": "login", "time": "2024-03-03 10:00:00", "price": 7.25},
        {"distinct_id": "广东-1", "event": "pay", "time": "2024-03-03 11:00:00"},
    ])
    pq.write_table(pa.table({
        "distinct_id": ["u3", "u4"], "event": ["pay", "share"],
        "time": pa.array([datetime(2024, 3, 4, 1, tzinfo=UTC), datetime(2024, 3, 4, 2, tzinfo=UTC)],
                         pa.timestamp("us", tz="UTC")),
        "price": [3.0, None],
    }), tmp_path / "c.parquet")
    assert engine.ingest_events(tmp_path / "a.csv") == 3
    assert engine.ingest_events(tmp_path / "b.jsonl") == 2
    assert engine.ingest_events(tmp_path / "c.parquet") == 2
    assert _events(engine, "price") == sorted([
        ("u1", "pay", _utc(2024, 3, 1, 8), 1.5),
        ("u,2", "pay", _utc(2024, 3, 1, 9, 30), 2.0),
        ("u3", "login", _utc(2024, 3, 2), None),
        ("u1", "login", _utc(2024, 3, 3, 10), 7.25),
        ("广东-1", "pay", _utc(2024, 3, 3, 11), None),
        ("u3", "pay", _utc(2024, 3, 4, 1), 3.0),
        ("u4", "share", _utc(2024, 3, 4, 2), None),
    ], key=str)
    snapshot = engine.store.snapshot()
    assert snapshot.manifest.event_rows == 7
    assert len(snapshot.manifest.events) == 3


def test_new_properties_become_columns_that_older_parts_read_as_null(engine_config, project, tmp_path):
    engine = _engine(engine_config, project)
    _write(tmp_path / "old.csv", "distinct_id,event,time\nu1,pay,2024-03-01 08:00:00\n")
    _jsonl(tmp_path / "new.jsonl", [{"distinct_id": "u2", "event": "pay", "time": "2024-03-01 09:00:00",
                                     "item": "sword", "level": 4}])
    engine.ingest_events(tmp_path / "old.csv")
    engine.ingest_events(tmp_path / "new.jsonl")
    assert set(engine.store.snapshot().event_columns) == {"uid", "event", "time", "item", "level"}
    assert _events(engine, "item, level") == [
        ("u1", "pay", _utc(2024, 3, 1, 8), None, None),
        ("u2", "pay", _utc(2024, 3, 1, 9), "sword", 4),
    ]


def test_columns_are_typed_by_their_values(engine_config, project, tmp_path):
    engine = _engine(engine_config, project)
    _jsonl(tmp_path / "e.jsonl", [
        {"distinct_id": "u1", "event": "pay", "time": "2024-03-01 08:00:00", "n": 3, "f": 1.5, "b": True,
         "s": "x", "t": "2024-02-01 00:00:00"},
        {"distinct_id": "u2", "event": "pay", "time": "2024-03-01 09:00:00", "n": 4, "f": 2, "b": False,
         "s": "y", "t": "2024-02-02 12:00:00"},
    ])
    engine.ingest_events(tmp_path / "e.jsonl")
    columns = engine.store.snapshot().event_columns
    assert {c: columns[c] for c in "nfbst"} == {"n": "BIGINT", "f": "DOUBLE", "b": "BOOLEAN", "s": "VARCHAR",
                                                "t": "TIMESTAMP"}
    assert _events(engine, "n, f, b, s, t") == [
        ("u1", "pay", _utc(2024, 3, 1, 8), 3, 1.5, True, "x", _utc(2024, 2, 1)),
        ("u2", "pay", _utc(2024, 3, 1, 9), 4, 2.0, False, "y", _utc(2024, 2, 2, 12)),
    ]
    # A later file's integers widen nothing: they are stored in the existing DOUBLE column.
    _write(tmp_path / "more.csv", "distinct_id,event,time,f,n\nu3,pay,2024-03-01 10:00:00,7,5.0\n")
    engine.ingest_events(tmp_path / "more.csv")
    assert engine.store.snapshot().event_columns["f"] == "DOUBLE"
    assert _events(engine, "f, n")[-1] == ("u3", "pay", _utc(2024, 3, 1, 10), 7.0, 5)


def test_naive_times_are_local_to_the_project_and_explicit_offsets_win(engine_config, project, tmp_path,
                                                                        database_url):
    engine = _engine(engine_config, project, database_url, tz="Asia/Shanghai")
    _write(tmp_path / "mixed.csv", "distinct_id,event,time,seen\n"
                                   "a,pay,2024-03-01 08:00:00,2024-01-01 00:00:00\n"
                                   "b,pay,2024-03-01T08:00:00+00:00,2024-01-01T00:00:00Z\n"
                                   "c,pay,2024-03-01T08:00:00-05:00,2024-01-01 23:30:00\n")
    _jsonl(tmp_path / "naive.jsonl", [{"distinct_id": "d", "event": "pay", "time": "2024-07-01 00:00:00"}])
    _write(tmp_path / "epoch.csv", "distinct_id,event,time\ne,pay,1709280000\nf,pay,1709280000123\n")
    pq.write_table(pa.table({"distinct_id": ["g", "h"], "event": ["pay", "pay"],
                             "time": pa.array([datetime(2024, 3, 1, 8), datetime(2024, 3, 1, 9)],
                                              pa.timestamp("us"))}), tmp_path / "naive.parquet")
    for name in ("mixed.csv", "naive.jsonl", "epoch.csv", "naive.parquet"):
        engine.ingest_events(tmp_path / name)

    def local(*args):
        return datetime(*args, tzinfo=SHANGHAI).astimezone(UTC).replace(tzinfo=None)

    got = {row[0]: row[2:] for row in _events(engine, "seen")}
    assert got == {
        "a": (local(2024, 3, 1, 8), local(2024, 1, 1)),
        "b": (_utc(2024, 3, 1, 8), _utc(2024, 1, 1)),
        "c": (_utc(2024, 3, 1, 13), local(2024, 1, 1, 23, 30)),
        "d": (local(2024, 7, 1), None),
        "e": (_utc(2024, 3, 1, 8), None),
        "f": (_utc(2024, 3, 1, 8, 0, 0, 123000), None),
        "g": (local(2024, 3, 1, 8), None),
        "h": (local(2024, 3, 1, 9), None),
    }


def test_profiles_upsert_by_key(engine_config, project, tmp_path):
    engine = _engine(engine_config, project)
    _write(tmp_path / "first.csv", "distinct_id,level,city\nu1,1,北京\nu2,2,上海\nu3,3,\n")
    _write(tmp_path / "second.csv", "distinct_id,level,vip\nu2,20,true\nu4,40,false\nu2,21,false\n")
    assert engine.ingest_users(tmp_path / "first.csv") == 3
    assert engine.ingest_users(tmp_path / "second.csv") == 2
    assert _users(engine, "level, city, vip") == {
        "u1": (1, "北京", None),
        "u2": (21, "上海", False),   # given columns replaced (last row wins), city kept
        "u3": (3, None, None),
        "u4": (40, None, False),
    }
    manifest = engine.store.snapshot().manifest
    assert manifest.user_rows == 4
    assert manifest.user_columns["vip"] == "BOOLEAN"


def test_the_universe_is_profiles_and_event_users(engine_config, project, tmp_path):
    engine = _engine(engine_config, project)
    assert len(engine.store.snapshot().universe()) == 0
    _write(tmp_path / "u.csv", "distinct_id,level\np1,1\nboth,2\n")
    _write(tmp_path / "e.csv", "distinct_id,event,time\nboth,pay,2024-03-01 00:00:00\ne1,pay,2024-03-01 00:00:00\n")
    _write(tmp_path / "e2.csv", "distinct_id,event,time\ne2,pay,2024-03-02 00:00:00\ne1,pay,2024-03-02 00:00:00\n")
    engine.ingest_users(tmp_path / "u.csv")
    engine.ingest_events(tmp_path / "e.csv")
    engine.ingest_events(tmp_path / "e2.csv")
    universe = engine.store.snapshot().universe()
    assert sorted(engine.iter_keys(universe)) == ["both", "e1", "e2", "p1"]


def _state(engine: ProjectEngine) -> tuple:
    manifest_path = engine.store.manifest_path
    files = sorted(p.relative_to(engine.store.root).as_posix() for p in engine.store.root.rglob("*")
                   if p.is_file() and p.name != ".lock")
    return (manifest_path.read_bytes() if manifest_path.exists() else None, files)


def _engine_with_base(engine_config, project, tmp_path, with_count: bool = False):
    """An engine holding a little committed data to keep intact, with typed columns (price, vip, and
    count if asked) for the wrong-type cases; returns (engine, its state)."""
    engine = _engine(engine_config, project)
    extra = (",count", ",1") if with_count else ("", "")
    _write(tmp_path / "base_events.csv",
           f"distinct_id,event,time,price{extra[0]}\nbase,pay,2024-02-01 00:00:00,1.5{extra[1]}\n")
    _write(tmp_path / "base_users.csv", "distinct_id,vip\nbase,false\n")
    engine.ingest_events(tmp_path / "base_events.csv")
    engine.ingest_users(tmp_path / "base_users.csv")
    return engine, _state(engine)


@pytest.mark.parametrize(("kind", "name", "text", "message"), [
    ("events", "bad_time.csv", "distinct_id,event,time\nok,pay,2024-03-01 00:00:00\nbad1,pay,yesterday\n"
     "ok2,pay,2024-03-01 00:00:00\nbad2,pay,\n", "time is missing or not a time at line 3, 5"),
    ("events", "empty_key.csv", "distinct_id,event,time\nok,pay,2024-03-01 00:00:00\n,pay,2024-03-01 00:00:00\n",
     "empty distinct_id at line 3"),
    ("events", "quoted.csv", 'distinct_id,event,time\nok,"multi\nline",2024-03-01 00:00:00\n'
     ',pay,2024-03-01 00:00:00\n', "empty distinct_id at line 4"),
    ("events", "wrong_type.csv", "distinct_id,event,time,price\nok,pay,2024-03-01 00:00:00,1\n"
     "bad,pay,2024-03-01 00:00:00,cheap\n", "column 'price' holds a value that is not a number at line 3"),
    ("events", "fraction.jsonl", '{"distinct_id": "ok", "event": "pay", "time": "2024-03-01", "count": 2}\n'
     '{"distinct_id": "bad", "event": "pay", "time": "2024-03-01", "count": 2.5}\n',
     "column 'count' holds a value that is not an integer at line 2"),
    ("events", "too_many.csv", "distinct_id,event,time\nok,pay,2024-03-01 00:00:00\n"
     "bad,pay,2024-03-01 00:00:00,extra\n", "wrong number of fields at line 3 (4 fields, the header has 3)"),
    ("events", "too_many_last.csv", "distinct_id,event,time\nok,pay,2024-03-01 00:00:00\n"
     "ok,pay,2024-03-01 00:00:00\nbad,pay,2024-03-01 00:00:00,x,y\n", "wrong number of fields at line 4"),
    ("events", "too_few.csv", "distinct_id,event,time\nok,pay\n", "wrong number of fields at line 2"),
    ("events", "broken.jsonl", '{"distinct_id": "ok", "event": "pay", "time": "2024-03-01"}\n'
     '{"distinct_id": "ok", "event": pay}\n', "malformed JSON at line 2"),
    ("events", "no_time.jsonl", '{"distinct_id": "ok", "event": "pay"}\n', "missing column 'time'"),
    ("users", "bool.csv", "distinct_id,vip\nok,true\nbad,7\n", "column 'vip' holds a value that is not a boolean at line 3"),
    ("users", "empty_user.jsonl", '{"distinct_id": "ok"}\n{"distinct_id": ""}\n', "empty distinct_id at line 2"),
])
def test_malformed_rows_are_reported_and_nothing_is_committed(engine_config, project, tmp_path, kind, name, text,
                                                              message):
    engine, before = _engine_with_base(engine_config, project, tmp_path, with_count=True)
    path = _write(tmp_path / name, text)
    ingest = engine.ingest_events if kind == "events" else engine.ingest_users
    with pytest.raises(IngestError) as caught:
        ingest(path)
    assert message in str(caught.value)
    assert name in str(caught.value)
    assert _state(engine) == before
    manifest = engine.store.snapshot().manifest
    assert (manifest.event_rows, manifest.user_rows) == (1, 1)
    # No key of the rejected file reached the dictionary either.
    assert engine.lookup("ok") is None


def test_unknown_format_and_missing_file_are_clear_errors(engine_config, project, tmp_path):
    engine = _engine(engine_config, project)
    with pytest.raises(IngestError, match="unknown file type"):
        engine.ingest_events(_write(tmp_path / "x.xml", "<a/>"))
    with pytest.raises(IngestError, match="no such file"):
        engine.ingest_events(tmp_path / "absent.csv")
    with pytest.raises(IngestError, match="empty"):
        engine.ingest_events(_write(tmp_path / "empty.csv", ""))
    assert engine.store.is_empty()


def _parquet(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=2)  # several row groups: rows counted across them
    return path


_T = datetime(2024, 3, 1, 8, tzinfo=UTC)


@pytest.mark.parametrize(("kind", "name", "columns", "message"), [
    ("events", "empty_key.parquet", {"distinct_id": ["ok", "ok", "ok", "", "ok", None],
                                     "event": ["pay"] * 6, "time": [_T] * 6}, "empty distinct_id at row 4, 6"),
    ("events", "no_time.parquet", {"distinct_id": ["ok"] * 5, "event": ["pay"] * 5,
                                   "time": [_T, _T, _T, _T, None]}, "time is missing or not a time at row 5"),
    ("events", "empty_event.parquet", {"distinct_id": ["ok"] * 3, "event": ["pay", "pay", ""], "time": [_T] * 3},
     "empty event at row 3"),
    ("events", "wrong_type.parquet", {"distinct_id": ["ok"] * 3, "event": ["pay"] * 3, "time": [_T] * 3,
                                      "price": ["1.5", "2", "cheap"]},
     "column 'price' holds a value that is not a number at row 3"),
    ("events", "named_rows.parquet", {"distinct_id": ["ok", ""], "event": ["pay"] * 2, "time": [_T] * 2,
                                      "file_row_number": [7, 8]}, "empty distinct_id at row 2"),
    ("users", "bool.parquet", {"distinct_id": ["ok", "ok", "bad"], "vip": ["true", "false", "7"]},
     "column 'vip' holds a value that is not a boolean at row 3"),
    ("users", "empty_user.parquet", {"distinct_id": ["ok", None, "ok"]}, "empty distinct_id at row 2"),
])
def test_malformed_parquet_rows_are_reported_by_row_and_nothing_is_committed(engine_config, project, tmp_path, kind,
                                                                             name, columns, message):
    engine, before = _engine_with_base(engine_config, project, tmp_path)
    ingest = engine.ingest_events if kind == "events" else engine.ingest_users
    with pytest.raises(IngestError) as caught:
        ingest(_parquet(tmp_path / name, columns))
    assert message in str(caught.value)
    assert name in str(caught.value)
    assert _state(engine) == before
    assert engine.lookup("ok") is None


def test_a_damaged_parquet_file_is_rejected_and_leaves_nothing(engine_config, project, tmp_path):
    engine = _engine(engine_config, project)
    good = _parquet(tmp_path / "good.parquet", {"distinct_id": [f"k{i}" for i in range(64)], "event": ["pay"] * 64,
                                                "time": [_T] * 64, "note": [f"n{i}" * 50 for i in range(64)]})
    # Garble the data pages of one property column chunk, keeping the footer: the file opens, its
    # statistics answer the checks, and it fails only when the write reads those pages.
    chunk = pq.ParquetFile(good).metadata.row_group(16).column(3)
    data = bytearray(good.read_bytes())
    start = chunk.data_page_offset
    data[start:start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:-20])
    for path in (damaged, truncated):
        with pytest.raises(IngestError, match=f"{path.name}: .*nothing was ingested"):
            engine.ingest_events(path)
    assert engine.store.is_empty()
    leftovers = [p for p in engine.store.root.rglob("*") if p.is_file() and p.name != ".lock"]
    assert leftovers == []


def test_parquet_events_and_profiles_keep_file_order(engine_config, project, tmp_path):
    engine = _engine(engine_config, project)
    keys = [f"u{i % 5}" for i in range(23)]
    engine.ingest_users(_parquet(tmp_path / "users.parquet", {"distinct_id": keys, "level": list(range(23))}))
    # The last row of each key wins: row i holds level i.
    assert _users(engine, "level") == {f"u{k}": (max(i for i in range(23) if i % 5 == k),) for k in range(5)}
    times = [datetime(2024, 3, 1, i, tzinfo=UTC) for i in range(23)]
    engine.ingest_events(_parquet(tmp_path / "events.parquet", {
        "distinct_id": keys, "event": ["pay", "view"] * 11 + ["pay"], "time": times,
        "file_row_number": list(range(100, 123))}))
    assert _events(engine, "file_row_number") == sorted(
        (keys[i], ["pay", "view"][i % 2] if i < 22 else "pay", times[i].replace(tzinfo=None), 100 + i)
        for i in range(23))
def _rollup_rows(engine: ProjectEngine) -> list[tuple]:
    """(key, event, local day, count) of every rollup row of the store, sorted."""
    snapshot = engine.store.snapshot()
    con = snapshot.connect()
    try:
        assert snapshot.create_rollup_view(con, engine.tz.key)
        rows = con.execute("SELECT uid, event, day, n FROM rollups").fetchall()
    finally:
        con.close()
    return sorted((_key(engine, r[0]), *r[1:]) for r in rows)


@pytest.mark.parametrize("batch_rows", [4_000_000, 1])
def test_each_part_gets_a_daily_rollup_in_the_projects_local_days(engine_config, project, database_url, tmp_path,
                                                                   batch_rows, monkeypatch):
    from cohort_engine.backends.embedded import store

    # One row a batch: a part's rollup is merged from its batches' counts.
    monkeypatch.setattr(store, "ROLLUP_BATCH_ROWS", batch_rows)
    engine = _engine(engine_config, project, database_url, tz="Asia/Shanghai")
    _jsonl(tmp_path / "a.jsonl", [
        {"distinct_id": "u1", "event": "pay", "time": "2024-03-01 23:59:59"},
        {"distinct_id": "u1", "event": "pay", "time": "2024-03-01 00:00:00"},
        {"distinct_id": "u1", "event": "pay", "time": "2024-03-02 00:00:00"},
        # 2024-03-02 15:30 UTC is 23:30 local: still the 2nd.
        {"distinct_id": "u2", "event": "login", "time": "2024-03-02T15:30:00Z"},
        {"distinct_id": "u2", "event": "login", "time": "2024-03-02T16:00:00Z"},
    ])
    _jsonl(tmp_path / "b.jsonl", [{"distinct_id": "u1", "event": "pay", "time": "2024-03-01 12:00:00"}])
    engine.ingest_events(tmp_path / "a.jsonl")
    engine.ingest_events(tmp_path / "b.jsonl")
    manifest = engine.store.snapshot().manifest
    assert set(manifest.rollups) == set(manifest.events)
    assert {r["timezone"] for r in manifest.rollups.values()} == {"Asia/Shanghai"}
    assert _rollup_rows(engine) == [
        # One row per part: a user's day in two parts is two rows, which the planner adds up.
        ("u1", "pay", date(2024, 3, 1), 1),
        ("u1", "pay", date(2024, 3, 1), 2),
        ("u1", "pay", date(2024, 3, 2), 1),
        ("u2", "login", date(2024, 3, 2), 1),
        ("u2", "login", date(2024, 3, 3), 1),
    ]


def test_stores_without_rollups_or_in_another_zone_read_raw_events(engine_config, project, database_url, tmp_path):
    from cohort_engine.backends.embedded.compiler import PLAN_COUNTS
    from cohort_engine.definition import parse_definition

    engine = _engine(engine_config, project)
    _jsonl(tmp_path / "a.jsonl", [{"distinct_id": f"u{i}", "event": "pay", "time": f"2024-03-0{1 + i % 3} 10:00:00"}
                                  for i in range(6)])
    engine.ingest_events(tmp_path / "a.jsonl")
    tree = parse_definition({"type": "event", "event": "pay", "window": {"start": "2024-03-02", "end": "2024-03-03"},
                             "cmp": "gte", "values": [1]})

    def members_and_plan(eng):
        before = PLAN_COUNTS.copy()
        members = sorted(eng.iter_keys(eng.compute(tree, base_time="2024-03-10T00:00:00").bitmap))
        return members, set(+(PLAN_COUNTS - before))

    expected = ["u1", "u2", "u4", "u5"]
    assert members_and_plan(engine) == (expected, {"rollup_exists"})
    # The project moved to another zone: the rollups' days are not its days.
    assert members_and_plan(_engine(engine_config, project, database_url, tz="Asia/Shanghai"))[1] == {"raw"}
    set_timezone(database_url, project[0], "UTC")
    # A store written before rollups existed: its manifest has no `rollups`.
    manifest = json.loads(engine.store.manifest_path.read_text())
    del manifest["rollups"]
    engine.store.manifest_path.write_text(json.dumps(manifest))
    assert members_and_plan(_engine(engine_config, project)) == (expected, {"raw"})
    # Rollups built afterwards for the parts without one: the planner reads them again.
    assert engine.store.build_missing_rollups(engine.tz) == 1
    assert engine.store.build_missing_rollups(engine.tz) == 0
    assert members_and_plan(_engine(engine_config, project)) == (expected, {"rollup_exists"})
