"""Real processes at once: evaluations during ingests, concurrent ingests, concurrent dictionary writers."""

from __future__ import annotations

import multiprocessing
import random
import traceback
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import psycopg2
import pytest

from cohort_engine import dictionary
from cohort_engine.config import EngineConfig
from cohort_engine.definition import parse_definition
from cohort_engine.dictionary import UserKeyDictionary
from cohort_engine.project import ProjectEngine

pytestmark = pytest.mark.slow
SPAWN = multiprocessing.get_context("spawn")
DAY = datetime(2024, 3, 1)
# Users who paid at least twice on 2024-03-01..03 (UTC project), plus every user with a profile at level >= 3.
COHORT = {"op": "or", "children": [
    {"type": "event", "event": "pay", "agg": {"fn": "count"}, "window": {"start": "2024-03-01", "end": "2024-03-03"},
     "cmp": "gte", "values": [2]},
    {"type": "profile", "property": "level", "cmp": "gte", "values": [3]},
]}


def _event_rows(seed: int, count: int) -> list[tuple[str, str, datetime]]:
    rng = random.Random(seed)
    return [(f"user-{rng.randrange(400)}", rng.choice(["pay", "pay", "login"]),
             DAY + timedelta(minutes=rng.randrange(6 * 24 * 60))) for _ in range(count)]


def _write_events(path: Path, rows) -> Path:
    path.write_text("distinct_id,event,time\n" + "".join(f"{k},{e},{t:%Y-%m-%d %H:%M:%S}\n" for k, e, t in rows))
    return path


def _brute_force(event_rows, levels: dict[str, int]) -> set[str]:
    """The cohort computed directly from the input rows."""
    pays = Counter(k for k, e, t in event_rows if e == "pay" and DAY <= t < DAY + timedelta(days=3))
    return {k for k, n in pays.items() if n >= 2} | {k for k, level in levels.items() if level >= 3}


def _evaluate_until(config: EngineConfig, project: str, stop, results) -> None:
    try:
        engine = ProjectEngine(config, project)
        tree = parse_definition(COHORT)
        counts = []
        while not stop.is_set() or not counts:
            counts.append(engine.compute(tree, base_time="2024-03-10").count)
        results.put(("ok", counts))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def _ingest_all(config: EngineConfig, project: str, paths: list[str], results) -> None:
    try:
        engine = ProjectEngine(config, project)
        results.put(("ok", [engine.ingest_events(p) for p in paths]))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def _collect(queue, n: int) -> list:
    out = []
    for _ in range(n):
        status, value = queue.get(timeout=120)
        assert status == "ok", value
        out.append(value)
    return out


def test_evaluations_during_repeated_ingests_each_see_one_committed_state(engine_config, project, tmp_path):
    name, _ = project
    engine = ProjectEngine(engine_config, name)
    levels = {f"user-{i}": i % 5 for i in range(0, 400, 7)}
    (tmp_path / "users.csv").write_text("distinct_id,level\n" + "".join(f"{k},{v}\n" for k, v in levels.items()))
    engine.ingest_users(tmp_path / "users.csv")
    batches = [_event_rows(seed, 1500) for seed in range(6)]
    engine.ingest_events(_write_events(tmp_path / "e0.csv", batches[0]))
    later = [str(_write_events(tmp_path / f"e{i}.csv", rows)) for i, rows in enumerate(batches) if i]
    # The state after k ingests is the first k batches; each evaluation must match one of them.
    allowed = {len(_brute_force([r for b in batches[:k] for r in b], levels)) for k in range(1, len(batches) + 1)}

    stop, results, ingested = SPAWN.Event(), SPAWN.Queue(), SPAWN.Queue()
    readers = [SPAWN.Process(target=_evaluate_until, args=(engine_config, name, stop, results)) for _ in range(2)]
    writer = SPAWN.Process(target=_ingest_all, args=(engine_config, name, later, ingested))
    for p in readers:
        p.start()
    writer.start()
    try:
        (rows_added,) = _collect(ingested, 1)
    finally:
        stop.set()
    counts = [c for value in _collect(results, 2) for c in value]
    for p in [*readers, writer]:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert rows_added == [1500] * len(later)
    assert counts and set(counts) <= allowed, (sorted(set(counts)), sorted(allowed))
    final = engine.compute(parse_definition(COHORT), base_time="2024-03-10")
    expected = _brute_force([r for b in batches for r in b], levels)
    assert sorted(engine.iter_keys(final.bitmap)) == sorted(expected)


def test_two_concurrent_ingests_both_land(engine_config, project, tmp_path):
    name, _ = project
    first, second = _event_rows(1, 3000), [(f"other-{k}", e, t) for k, e, t in _event_rows(2, 2000)]
    paths = [str(_write_events(tmp_path / "a.csv", first)), str(_write_events(tmp_path / "b.csv", second))]
    done = SPAWN.Queue()
    workers = [SPAWN.Process(target=_ingest_all, args=(engine_config, name, [p], done)) for p in paths]
    for w in workers:
        w.start()
    assert sorted(r[0] for r in _collect(done, 2)) == [2000, 3000]
    for w in workers:
        w.join(timeout=60)
    engine = ProjectEngine(engine_config, name)
    snapshot = engine.store.snapshot()
    assert snapshot.manifest.event_rows == 5000
    assert len(snapshot.manifest.events) == 2
    con = snapshot.connect()
    try:
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 5000
    finally:
        con.close()
    assert sorted(engine.iter_keys(snapshot.universe())) == sorted({k for k, _, _ in first + second})


def _encode_batches(database_url: str, project_id: int, batches: list[list[str]], results) -> None:
    try:
        conn = psycopg2.connect(database_url)
        dictionary_ = UserKeyDictionary(conn, project_id)
        mapping: dict[str, int] = {}
        for batch in batches:
            for key, uid in zip(batch, dictionary_.encode(batch).tolist(), strict=True):
                if mapping.setdefault(key, uid) != uid:
                    raise AssertionError(f"{key!r} changed id within one process")
        conn.close()
        results.put(("ok", mapping))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def test_concurrent_dictionary_writers_get_one_dense_id_per_key(database_url, project):
    _, project_id = project
    rng = random.Random(5)
    universe = [f"k{i}" for i in range(12000)] + ["tab\there", "line\nbreak", "back\\slash", "广东省"]
    plans = []
    for _ in range(4):
        # Large batches take the cached path, small ones the hash-bucket path; both overlap.
        plans.append([rng.sample(universe, 5000), rng.sample(universe, 40), rng.sample(universe, 3000),
                      rng.sample(universe, 7) + ["广东省", "tab\there"]])
    results = SPAWN.Queue()
    workers = [SPAWN.Process(target=_encode_batches, args=(database_url, project_id, plan, results)) for plan in plans]
    for w in workers:
        w.start()
    mappings = _collect(results, len(workers))
    for w in workers:
        w.join(timeout=60)
    merged: dict[str, int] = {}
    for mapping in mappings:
        for key, uid in mapping.items():
            assert merged.setdefault(key, uid) == uid, f"{key!r} got two ids"
    assert sorted(merged.values()) == list(range(len(merged)))
    assert set(merged) == {k for plan in plans for batch in plan for k in batch}
    dictionary.clear_process_caches()
    conn = psycopg2.connect(database_url)
    try:
        fresh = UserKeyDictionary(conn, project_id)
        keys = list(merged)
        assert fresh.decode([merged[k] for k in keys]) == keys
        assert fresh.encode(keys, create=False).tolist() == [merged[k] for k in keys]
    finally:
        conn.close()
