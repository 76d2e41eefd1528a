"""Engine section (issue 2): a cohort vs hand-written DuckDB SQL, ingest, dictionary, 100M events."""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import duckdb
import numpy as np

from cohort_engine import db, dictionary, leafcache
from cohort_engine.backends.embedded.store import write_rollup
from cohort_engine.config import EngineConfig
from cohort_engine.definition import parse_definition
from cohort_engine.dictionary import UserKeyDictionary
from cohort_engine.project import ProjectEngine
from cohort_engine.sample import user_keys, write_sample

from . import BenchContext, Row, section

SCALES = {
    "full": {"main": (20_000_000, 1_000_000), "large": (100_000_000, 10_000_000), "dictionary": 1_000_000},
    "small": {"main": (1_000_000, 50_000), "large": (3_000_000, 300_000), "dictionary": 100_000},
}
SEED = 20240630
END = date(2024, 6, 30)
BASE_TIME = "2024-06-30T12:00:00"
# Three conditions: paid twice in the last 30 days, level >= 3, and (shared or attended an activity
# in the last 7 days): four leaves, the last two an `or` of two event leaves.
COHORT = {"op": "and", "children": [
    {"type": "event", "event": "pay", "agg": {"fn": "count"}, "window": {"last": 30, "offset": 0, "unit": "day"},
     "cmp": "gte", "values": [2]},
    {"type": "profile", "property": "user_level", "cmp": "gte", "values": [3]},
    {"op": "or", "children": [
        {"type": "event", "event": "share", "agg": {"fn": "count"}, "window": {"last": 7, "offset": 0, "unit": "day"},
         "cmp": "gte", "values": [1]},
        {"type": "event", "event": "activity_attend", "agg": {"fn": "count"},
         "window": {"last": 7, "offset": 0, "unit": "day"}, "cmp": "gte", "values": [1]},
    ]},
]}
# The same cohort by hand: UTC project, base day 2024-06-30, so the last 30 days are 06-01..06-30
# and the last 7 days 06-24..06-30, as half-open UTC ranges.
HAND_SQL = """
SELECT uid FROM read_parquet({events}) WHERE event = 'pay'
  AND time >= TIMESTAMP '2024-06-01' AND time < TIMESTAMP '2024-07-01' GROUP BY uid HAVING count(*) >= 2
INTERSECT
SELECT uid FROM read_parquet({users}) WHERE user_level >= 3
INTERSECT
SELECT uid FROM read_parquet({events}) WHERE event IN ('share', 'activity_attend')
  AND time >= TIMESTAMP '2024-06-24' AND time < TIMESTAMP '2024-07-01'
"""


def _config(ctx: BenchContext) -> EngineConfig:
    return EngineConfig(database_url=ctx.database_url, store_dir=str(ctx.work_dir / "store"))


def _sample(ctx: BenchContext, events: int, users: int) -> dict:
    """Sample files for this size, generated once and reused by later runs."""
    out = ctx.work_dir / f"data-{events}-{users}"
    marker = out / "done.json"
    if marker.exists():
        saved = json.loads(marker.read_text())
        return {"users": Path(saved["users"]), "events": [Path(p) for p in saved["events"]]}
    started = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    written = write_sample(out, users, events, SEED, end=END)
    marker.write_text(json.dumps({"users": str(written["users"]), "events": [str(p) for p in written["events"]]}))
    print(f"  generated {events:,} events / {users:,} users in {time.perf_counter() - started:.0f} s", flush=True)
    return {"users": written["users"], "events": written["events"]}


def _fresh_project(ctx: BenchContext, name: str) -> ProjectEngine:
    """The project recreated empty: new dictionary, no store."""
    with db.connection(ctx.database_url) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM projects WHERE name = %s", (name,))
        cur.execute("INSERT INTO projects (name, timezone) VALUES (%s, 'UTC')", (name,))
    shutil.rmtree(ctx.work_dir / "store" / name, ignore_errors=True)
    return ProjectEngine(_config(ctx), name)


def _existing_project(ctx: BenchContext, name: str, events: int) -> ProjectEngine | None:
    with db.connection(ctx.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM projects WHERE name = %s", (name,))
        if cur.fetchone() is None:
            return None
    engine = ProjectEngine(_config(ctx), name)
    return engine if engine.store.snapshot().manifest.event_rows == events else None


def _ingest(engine: ProjectEngine, data: dict) -> tuple[float, float]:
    """Seconds to ingest the profiles, then the events."""
    started = time.perf_counter()
    engine.ingest_users(data["users"])
    users_seconds = time.perf_counter() - started
    print(f"  {engine.name}: profiles ingested in {users_seconds:.0f} s", flush=True)
    started = time.perf_counter()
    for part in data["events"]:
        engine.ingest_events(part)
    events_seconds = time.perf_counter() - started
    print(f"  {engine.name}: {len(data['events'])} event files ingested in {events_seconds:.0f} s", flush=True)
    return users_seconds, events_seconds


def _best_of(fn, runs: int = 3) -> tuple[float, object]:
    fn()  # warm the OS page cache and DuckDB's metadata
    best, result = float("inf"), None
    for _ in range(runs):
        leafcache.clear_shared()  # cold: no leaf answer kept from the warm-up run (issue 15's leaf cache)
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def _hand_sql_uids(engine: ProjectEngine) -> np.ndarray:
    manifest = engine.store.snapshot().manifest
    root = engine.store.root
    listing = "[" + ", ".join(f"'{root / p}'" for p in manifest.events) + "]"
    con = duckdb.connect(":memory:")
    try:
        return con.execute(HAND_SQL.format(events=listing, users=f"'{root / manifest.users}'")).fetchnumpy()["uid"]
    finally:
        con.close()


def _interleaved_best(fns: list, runs: int = 5) -> list[tuple[float, object]]:
    """Best time and last result of each fn, run in turns (one warm-up each) so that a noisy
    neighbour slows them all alike."""
    for fn in fns:
        fn()  # warm the OS page cache and DuckDB's metadata
    best = [(float("inf"), None)] * len(fns)
    for _ in range(runs):
        for i, fn in enumerate(fns):
            leafcache.clear_shared()  # cold: no leaf answer kept from an earlier run (issue 15's leaf cache)
            started = time.perf_counter()
            result = fn()
            best[i] = (min(best[i][0], time.perf_counter() - started), result)
    return best


def _cohort_vs_sql(ctx: BenchContext, engine: ProjectEngine, label: str) -> list[Row]:
    """The cohort on the default planner (daily rollups where exact) and on raw events only,
    against the hand-written statement over raw events, in one interleaved run."""
    tree = parse_definition(COHORT)
    raw = ProjectEngine(replace(engine.config, planner="raw"), engine.name)
    (engine_seconds, result), (raw_seconds, raw_result), (sql_seconds, uids) = _interleaved_best([
        lambda: engine.compute(tree, base_time=BASE_TIME),
        lambda: raw.compute(tree, base_time=BASE_TIME),
        lambda: _hand_sql_uids(engine),
    ])
    expected = set(np.unique(uids).tolist())
    for plan, found in (("rollups", result), ("raw events", raw_result)):
        got = set(found.bitmap)
        if got != expected:
            raise AssertionError(f"engine ({plan}) and hand-written SQL disagree on {label}: engine {len(got)} "
                                 f"users, SQL {len(expected)}, {len(got ^ expected)} differ")
    row = Row(f"cohort (3 conditions, 4 leaves), {label}: engine", engine_seconds, "s", sql_seconds,
              "one DuckDB SQL statement", "ratio <= 0.5")
    row.passed = row.ratio <= 0.5
    row.note = (f"both return the same {len(expected):,} users (checked on every run); event leaves read the "
                "daily rollups")
    raw_row = Row(f"same cohort, engine on raw events only (COHORTS_PLANNER=raw), {label}", raw_seconds, "s",
                  sql_seconds, "one DuckDB SQL statement", note="same users; the plan before rollups")
    return [row, raw_row]


def _rollup_seconds(engine: ProjectEngine) -> float:
    """Seconds to build the daily rollups of every event part again (what ingest spends on them)."""
    snapshot = engine.store.snapshot()
    scratch = engine.store.root / ".rollup-bench"
    scratch.mkdir(exist_ok=True)
    started = time.perf_counter()
    for part in snapshot.manifest.events:
        write_rollup(engine.store.root / part, scratch / Path(part).name, engine.tz)
    seconds = time.perf_counter() - started
    shutil.rmtree(scratch, ignore_errors=True)
    return seconds


def _dictionary_rows(ctx: BenchContext) -> list[Row]:
    n = SCALES[ctx.scale]["dictionary"]
    name = "bench_dictionary"
    engine = _fresh_project(ctx, name)
    keys = [f"new-{k}" for k in user_keys(n)]
    conn = db.connect(ctx.database_url)
    try:
        dictionary.clear_process_caches()
        keyed = UserKeyDictionary(conn, engine.project_id)
        started = time.perf_counter()
        ids = keyed.encode(keys)
        new_seconds = time.perf_counter() - started
        started = time.perf_counter()
        again = keyed.encode(keys)
        known_seconds = time.perf_counter() - started
        dictionary.clear_process_caches()
        started = time.perf_counter()
        cold = keyed.encode(keys, create=False)
        cold_seconds = time.perf_counter() - started
        if not (np.array_equal(ids, again) and np.array_equal(ids, cold)) or sorted(ids.tolist()) != list(range(n)):
            raise AssertionError("dictionary ids are not dense or not stable")
        dictionary.clear_process_caches()
        lookups = []
        for key in keys[:: max(1, n // 20)]:
            started = time.perf_counter()
            keyed.lookup(key)
            lookups.append(time.perf_counter() - started)
        started = time.perf_counter()
        decoded = keyed.decode(list(range(0, n, 50)))
        decode_seconds = time.perf_counter() - started
        if decoded != keys[::50]:
            raise AssertionError("dictionary decode disagrees with encode")
    finally:
        conn.close()
    count = f"{n / 1e6:g}M"
    return [
        Row(f"dictionary encode {count} new keys", new_seconds, "s", 18.0 * n / 1e6, "previous design, measured",
            "<= 3 s", new_seconds <= 3.0 * n / 1e6,
            "one indexed text row per key took 18-22 s here; now keys are appended as blocks and hash buckets"),
        Row(f"dictionary encode {count} known keys (process cache warm)", known_seconds, "s", 3.4 * n / 1e6,
            "previous design, measured", "<= 1 s", known_seconds <= 1.0 * n / 1e6),
        Row(f"dictionary encode {count} known keys (fresh process: cache loaded first)", cold_seconds, "s"),
        Row("dictionary single-key lookup, no cache (median)", statistics.median(lookups) * 1000, "ms"),
        Row(f"dictionary decode {n // 50:,} ids", decode_seconds, "s"),
    ]


def large_project(ctx: BenchContext) -> tuple[str, str]:
    """The 100M-event project (ingested once, reused by later runs and sections): (name, label).

    The ingest's rate is kept next to the store (ingest.json), so a run that reuses the store can
    still report it; a store without one, or BENCH_REBUILD_LARGE=1, is ingested again.
    """
    events, users = SCALES[ctx.scale]["large"]
    label = f"{events / 1e6:g}M events / {users / 1e6:g}M users"
    name = f"bench_{ctx.scale}_{events // 1_000_000}m"
    record = ctx.work_dir / "store" / name / "ingest.json"
    rebuild = os.environ.get("BENCH_REBUILD_LARGE") == "1" or not record.exists()
    if rebuild or _existing_project(ctx, name, events) is None:
        data = _sample(ctx, events, users)
        users_seconds, events_seconds = _ingest(_fresh_project(ctx, name), data)
        record.write_text(json.dumps({"users_seconds": users_seconds, "events_seconds": events_seconds,
                                      "files": len(data["events"]), "measured": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                              time.gmtime())}))
        ctx.notes.append(f"{label} ingested in this run: profiles {users_seconds:.0f} s, events {events_seconds:.0f} s "
                         f"({events / events_seconds:,.0f} events/s)")
    else:
        ctx.notes.append(f"{label} store reused from an earlier run (var/bench/store/{name}; "
                         "BENCH_REBUILD_LARGE=1 ingests it again)")
        engine = ProjectEngine(_config(ctx), name)
        started = time.perf_counter()
        built = engine.store.build_missing_rollups(engine.tz)
        if built:
            ctx.notes.append(f"{label}: daily rollups of {built} parts ingested before rollups existed built in "
                             f"{time.perf_counter() - started:.0f} s")
    return name, label


def _large_ingest_row(ctx: BenchContext, name: str, label: str) -> Row:
    """The rate at which the large project's events were ingested (in this run or when its store was built)."""
    events = SCALES[ctx.scale]["large"][0]
    record = json.loads((ctx.work_dir / "store" / name / "ingest.json").read_text())
    rate = events / record["events_seconds"]
    return Row(f"ingest events from Parquet ({label}, keys known)", rate, "events/s", target=">= 1,000,000/s",
               passed=rate >= 1_000_000,
               note=f"{record['files']} files, ingested {record['measured']} (one process, after the profiles)")


def large_child(ctx: BenchContext, project: str, what: str = "cohort") -> dict:
    """Compute the cohort (or the metric tag) in a fresh process; its wall time, count and peak RSS."""
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.engine", "--child", project, ctx.database_url, str(ctx.work_dir / "store"),
         what], stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    child.stdout.close()
    # wait4 gives this child's own peak; RUSAGE_CHILDREN would be the largest of every child so far.
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"benchmark child {what} exited {child.returncode}")
    measured = json.loads(out.strip().splitlines()[-1])
    # The child's own high-water mark (VmHWM, reset by exec): wait4's ru_maxrss also counts the
    # parent's pages at fork, 7.1 GB when this process had just ingested the 100M events itself.
    measured["peak_rss_kb"] = measured.get("vm_hwm_kb") or usage.ru_maxrss
    return measured


@section("engine")
def engine_section(ctx: BenchContext) -> list[Row]:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    db.migrate(ctx.database_url)
    scale = SCALES[ctx.scale]
    rows: list[Row] = []

    events, users = scale["main"]
    label = f"{events / 1e6:g}M events / {users / 1e6:g}M users"
    data = _sample(ctx, events, users)
    engine = _fresh_project(ctx, f"bench_{ctx.scale}_{events // 1_000_000}m")
    users_seconds, events_seconds = _ingest(engine, data)
    rows.append(Row(f"ingest events from Parquet ({label}, keys known)", events / events_seconds, "events/s",
                    target=">= 1,000,000/s", passed=events / events_seconds >= 1_000_000,
                    note=f"{len(data['events'])} files, each read in place and written as one part sorted by event (zstd)"))
    rows.append(Row(f"ingest profiles from Parquet ({users / 1e6:g}M users, new keys)", users / users_seconds, "users/s"))
    rollup_seconds = _rollup_seconds(engine)
    rows.append(Row(f"daily rollups of those parts (built inside that ingest), {label}", rollup_seconds, "s",
                    events_seconds, "the whole events ingest",
                    note=f"{100 * rollup_seconds / events_seconds:.0f}% of the ingest time"))
    rows += _cohort_vs_sql(ctx, engine, label)
    print(f"  cohort at {label}: engine {rows[-2].value:.3f} s, raw plan {rows[-1].value:.3f} s, "
          f"SQL {rows[-2].baseline:.3f} s", flush=True)
    rows += _dictionary_rows(ctx)
    print(f"  dictionary: {rows[-5].value:.2f} s new, {rows[-4].value:.2f} s known", flush=True)

    name, label = large_project(ctx)
    rows.append(_large_ingest_row(ctx, name, label))
    first = large_child(ctx, name)
    second = large_child(ctx, name)
    best = min(first["seconds"], second["seconds"])
    peak_gb = max(first["peak_rss_kb"], second["peak_rss_kb"]) / 1024 / 1024
    rows.append(Row(f"cohort, {label}: wall time in a fresh process", best, "s", target="< 1 s", passed=best < 1,
                    note=f"{first['count']:,} users; first run {first['seconds']:.2f} s, second {second['seconds']:.2f} s"))
    rows.append(Row(f"cohort, {label}: peak RSS of that process", peak_gb, "GB", target="< 2 GB", passed=peak_gb < 2))
    return rows


def _child(project: str, database_url: str, store_dir: str, what: str) -> None:
    # The limits a worker process gets (COHORTS_DUCKDB_*: docs/store.md "Memory").
    config = EngineConfig.from_env({**os.environ, "COHORTS_DATABASE_URL": database_url, "COHORTS_STORE_DIR": store_dir})
    engine = ProjectEngine(config, project)
    started = time.perf_counter()
    if what == "metric_tag":
        from benchmarks.tags import METRIC
        from cohort_engine.tag_definition import parse_tag_definition

        result = engine.compute_tag(parse_tag_definition(METRIC), base_time=BASE_TIME)
    else:
        result = engine.compute(parse_definition(COHORT), base_time=BASE_TIME)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "count": result.count, "vm_hwm_kb": _vm_hwm_kb(),
                      "self_peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def _vm_hwm_kb() -> int | None:
    """This process's peak resident memory since exec (Linux), in kB."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child" and sys.argv[5] in ("cohort", "metric_tag"):
        _child(*sys.argv[2:])
    else:
        print("usage: python -m benchmarks.engine --child PROJECT DATABASE_URL STORE_DIR cohort|metric_tag",
              file=sys.stderr)
        sys.exit(2)
