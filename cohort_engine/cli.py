"""`cohorts` command line: migrate, ingest, sample data, compute a definition, demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import db
from .backends.embedded.store import IngestError
from .config import EngineConfig
from .definition import DefinitionError, check_no_cycle, parse_definition
from .evaluate import EngineError
from .project import ProjectEngine, UnknownProject
from .sample import write_sample

DEMO_COHORTS = {
    "paid more than once in the last 30 days": {
        "type": "event", "event": "pay", "agg": {"fn": "count"},
        "window": {"last": 30, "offset": 0, "unit": "day"}, "cmp": "gt", "values": [1]},
    "level >= 3 in 广东省": {"op": "and", "children": [
        {"type": "profile", "property": "user_level", "cmp": "gte", "values": [3]},
        {"type": "profile", "property": "sugo_province", "cmp": "eq", "values": ["广东省"]}]},
    "fought then paid within the last 7 days": {
        "type": "sequence", "steps": [{"event": "fight_success"}, {"event": "pay"}],
        "window": {"last": 7, "offset": 0, "unit": "day"}},
    "never paid in the last 14 days (includes users with no events)": {
        "type": "event", "event": "pay", "agg": {"fn": "count"},
        "window": {"last": 14, "offset": 0, "unit": "day"}, "cmp": "eq", "values": [0]},
    "spent over 200 on swords, or active on 10+ days this month": {"op": "or", "children": [
        {"type": "event", "event": "pay", "filter": {"property": "item_name", "cmp": "eq", "values": ["sword"]},
         "agg": {"fn": "sum", "property": "price"}, "window": {"last": 30, "offset": 0, "unit": "day"},
         "cmp": "gt", "values": [200]},
        {"type": "event", "event": "*", "agg": {"fn": "days"}, "window": {"last": 1, "offset": 0, "unit": "month"},
         "cmp": "gte", "values": [10]}]},
}


def _project_engine(args) -> ProjectEngine:
    return ProjectEngine(EngineConfig.from_env(), args.project)


def cmd_migrate(args) -> int:
    applied = db.migrate(EngineConfig.from_env().database_url)
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    return 0


def cmd_project(args) -> int:
    try:
        ZoneInfo(args.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        print(f"unknown time zone {args.timezone!r}", file=sys.stderr)
        return 2
    with db.connection(EngineConfig.from_env().database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO projects (name, timezone) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET timezone = EXCLUDED.timezone RETURNING id",
            (args.name, args.timezone))
        print(f"project {args.name} id={cur.fetchone()[0]} timezone={args.timezone}")
    return 0


def cmd_ingest(args) -> int:
    engine = _project_engine(args)
    for path in args.files:
        started = time.perf_counter()
        if args.kind == "events":
            rows = engine.ingest_events(path, key_column=args.key_column, event_column=args.event_column,
                                        time_column=args.time_column)
        else:
            rows = engine.ingest_users(path, key_column=args.key_column)
        elapsed = time.perf_counter() - started
        print(f"ingested {rows} {args.kind} rows from {path} in {elapsed:.2f}s ({rows / max(elapsed, 1e-9):,.0f} rows/s)")
    return 0


def cmd_sample(args) -> int:
    engine = _project_engine(args) if args.ingest else None
    if engine and args.if_store_empty and not engine.store.is_empty():
        print(f"store of project {args.project} already has data; sample not loaded")
        return 0
    started = time.perf_counter()
    end = date.fromisoformat(args.end) if args.end else None
    written = write_sample(args.out, args.users, args.events, args.seed, end=end)
    print(f"wrote {args.users} users and {args.events} events to {args.out} in {time.perf_counter() - started:.1f}s")
    if engine:
        engine.ingest_users(written["users"])
        for part in written["events"]:
            engine.ingest_events(part)
        print(f"loaded the sample into project {args.project}")
    return 0


def _print_result(label: str, result, elapsed: float) -> None:
    print(f"{label}: {result.count} users ({elapsed:.3f}s)")
    for t in result.timings:
        print(f"    leaf {t['leaf']:<28} {t['type']:<9} {t['count']:>10} users {t['seconds']:.3f}s")


def cmd_compute(args) -> int:
    engine = _project_engine(args)
    tree = parse_definition(json.loads(Path(args.definition).read_text()))
    check_no_cycle(None, tree, lambda cohort_id: None)
    started = time.perf_counter()
    result = engine.compute(tree, base_time=args.base_time)
    _print_result(args.definition, result, time.perf_counter() - started)
    return 0


def cmd_demo(args) -> int:
    engine = _project_engine(args)
    snapshot = engine.store.snapshot()
    print(f"project {engine.name}: {snapshot.manifest.event_rows} events, {len(snapshot.universe())} known users")
    for label, definition in DEMO_COHORTS.items():
        started = time.perf_counter()
        result = engine.compute(parse_definition(definition), base_time=args.base_time)
        _print_result(label, result, time.perf_counter() - started)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cohorts", description=__doc__)
    parser.add_argument("--project", default="default", help="project name (default: default)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    p = sub.add_parser("project", help="create a project or change its time zone")
    p.add_argument("name")
    p.add_argument("--timezone", default="UTC")
    p.set_defaults(func=cmd_project)

    p = sub.add_parser("ingest", help="ingest CSV / JSON Lines / Parquet files")
    p.add_argument("kind", choices=["events", "users"])
    p.add_argument("files", nargs="+")
    p.add_argument("--key-column", default="distinct_id")
    p.add_argument("--event-column", default="event")
    p.add_argument("--time-column", default="time")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("sample", help="write a deterministic sample data set (and optionally load it)")
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--events", type=int, default=400000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--end", help="last day of events, YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--out", default="var/sample")
    p.add_argument("--ingest", action="store_true", help="load it into the project's store")
    p.add_argument("--if-store-empty", action="store_true", help="do nothing if the store has data")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("compute", help="compute a canonical definition and print count and timings")
    p.add_argument("definition", help="path of a JSON file with the canonical tree")
    p.add_argument("--base-time", help="ISO time the relative windows resolve against (default: now)")
    p.set_defaults(func=cmd_compute)

    p = sub.add_parser("demo", help="compute example cohorts over the project's data")
    p.add_argument("--base-time")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return args.func(args)
    except DefinitionError as exc:
        for path, messages in exc.errors.items():
            print(f"invalid definition: {path}: {'; '.join(messages)}", file=sys.stderr)
    except (IngestError, UnknownProject) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except EngineError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
    except json.JSONDecodeError as exc:
        print(f"error: not valid JSON: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"error: {exc.strerror}: {exc.filename}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
