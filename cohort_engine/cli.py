"""The engine's commands of `cohorts`: migrate, ingest, sample data, compute a definition, demo.

`cohorts` itself is cohorts_cli (the service's REST client), which registers these commands with
add_commands and gives them a progress display as args.progress; run alone (`python -m
cohort_engine.cli`) they show none. The engine draws nothing itself (docs/cli.md).
"""

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


class NoProgress:
    """What a command reports progress to when no display is given: nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, done: float, total: float | None = None) -> None:
        return None


def progress_of(args, description: str, total: float | None, unit: str = ""):
    """A progress task for a long step: the display args.progress(description, total, unit), or none."""
    factory = getattr(args, "progress", None)
    return factory(description, total, unit) if factory else NoProgress()


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
    # One step a file: a file is one load statement of the store, which reports no progress inside it.
    with progress_of(args, f"ingest {args.kind}", len(args.files), "files") as bar:
        for done, path in enumerate(args.files, 1):
            started = time.perf_counter()
            if args.kind == "events":
                rows = engine.ingest_events(path, key_column=args.key_column, event_column=args.event_column,
                                            time_column=args.time_column)
            else:
                rows = engine.ingest_users(path, key_column=args.key_column)
            elapsed = time.perf_counter() - started
            bar.update(done)
            print(f"ingested {rows} {args.kind} rows from {path} in {elapsed:.2f}s"
                  f" ({rows / max(elapsed, 1e-9):,.0f} rows/s)")
    return 0


def cmd_sample(args) -> int:
    engine = _project_engine(args) if args.ingest else None
    if engine and args.if_store_empty and not engine.store.is_empty():
        print(f"store of project {args.project} already has data; sample not loaded")
        return 0
    started = time.perf_counter()
    end = date.fromisoformat(args.end) if args.end else None
    with progress_of(args, "write sample", args.events, "events") as bar:
        written = write_sample(args.out, args.users, args.events, args.seed, end=end, progress=bar.update)
    print(f"wrote {args.users} users and {args.events} events to {args.out} in {time.perf_counter() - started:.1f}s")
    if engine:
        with progress_of(args, "load sample", 1 + len(written["events"]), "files") as bar:
            engine.ingest_users(written["users"])
            bar.update(1)
            for done, part in enumerate(written["events"], 2):
                engine.ingest_events(part)
                bar.update(done)
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
    with progress_of(args, "compute", None, "steps") as bar:
        result = engine.compute(tree, base_time=args.base_time, progress=bar.update)
    _print_result(args.definition, result, time.perf_counter() - started)
    return 0


def cmd_demo(args) -> int:
    engine = _project_engine(args)
    snapshot = engine.store.snapshot()
    print(f"project {engine.name}: {snapshot.manifest.event_rows} events, {len(snapshot.universe())} known users")
    with progress_of(args, "demo cohorts", len(DEMO_COHORTS), "cohorts") as bar:
        for done, (label, definition) in enumerate(DEMO_COHORTS.items(), 1):
            started = time.perf_counter()
            result = engine.compute(parse_definition(definition), base_time=args.base_time)
            bar.update(done)
            _print_result(label, result, time.perf_counter() - started)
    return 0


def add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", default="default", help="project name of the engine commands (default: default)")
    parser.add_argument("-v", "--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cohorts", description=__doc__)
    add_global_options(parser)
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def add_commands(sub) -> None:
    """Register the engine's commands on a subparsers object (this module's parser, or cohorts_cli's)."""
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return run(args)


def run(args) -> int:
    """Run a parsed engine command; errors a user can fix are printed, exit status 2."""
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
