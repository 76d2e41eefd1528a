"""Service administration: `python -m core.manage set-token PROJECT TOKEN`, daily refresh times, app keys, and
each project's outbound allowlist.

    python -m core.manage set-refresh-time PROJECT HH:MM   (local time in the project's zone; default 04:00)
    python -m core.manage set-app-key PROJECT APP_KEY      (or --clear; the name Ark's appKey header may use)
    python -m core.manage allow PROJECT --redis host:port/db --hproxy host:port --broker host:port --webhook host:port
                                        --import host:port   (routine ID-import URLs, docs/imports.md)
    python -m core.manage deny PROJECT --redis host:port/db ...   (or --all)
    python -m core.manage targets PROJECT
    python -m core.manage druid-backend PROJECT --brokers http://broker:8082 --events DS [--profiles DS] ...
    python -m core.manage druid-backend PROJECT --show | --embedded
(sugo-allow, sugo-deny and sugo-targets are the same commands under their first names.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import psycopg2

from cohort_engine import db
from core import addresses
from core.crons import daily_cron, parse_daily_time
from core.data import cohorts, projects, sugo_targets
from core.errors import Invalid
from core.services import backends
from core.settings import Settings
from dialects.sugo import schemas as dialect
from dialects.sugo.redis_targets import format_address


def _target_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project")
    parser.add_argument("--redis", action="append", default=[], metavar="HOST:PORT[/DB]",
                        help="a Sugo Redis target: standalone server, Sentinel or master at database DB (default "
                             "0), or Redis Cluster node (db 0); repeatable")
    parser.add_argument("--hproxy", action="append", default=[], metavar="HOST:PORT", help="repeatable")
    parser.add_argument("--broker", action="append", default=[], metavar="HOST:PORT",
                        help="a remote Druid broker; repeatable (the embedded /druid/v2 needs none)")
    parser.add_argument("--import", action="append", default=[], metavar="HOST:PORT",
                        help="a host routine ID imports may fetch http(s) URLs from; repeatable")
    parser.add_argument("--webhook", action="append", default=[], metavar="HOST:PORT",
                        help="an address the project's webhooks may call (http or https); repeatable")


def _targets(args, settings: Settings) -> list[tuple[str, str, int, int]]:
    """(kind, host, port, db) of the flags; ValueError naming a bad or forbidden one."""
    found = []
    own = dialect.own_redis_targets(settings)
    for kind in sugo_targets.KINDS:
        for text in getattr(args, kind):
            try:
                host, port, redis_db = dialect.parse_target(kind, text)
            except ValueError as exc:
                raise ValueError(f"--{kind} {text}: {exc}") from None
            if kind == "redis" and dialect.is_own(own, host, port, redis_db):
                raise ValueError(f"--redis {text}: one of this service's own Redis databases (bitmaps, job "
                                 "broker) is never a Sugo target")
            if kind == "webhook" and addresses.is_own(addresses.own_addresses(settings), host, port):
                raise ValueError(f"--webhook {text}: one of this service's own stores (PostgreSQL, Redis) is never "
                                 "a webhook target")
            found.append((kind, host, port, redis_db))
    return found


def _druid_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project")
    parser.add_argument("--show", action="store_true", help="print the project's backend setting (no secrets)")
    parser.add_argument("--embedded", action="store_true", help="go back to the embedded store")
    parser.add_argument("--brokers", help="broker URL or host:port list; each allowed first with sugo-allow --broker")
    parser.add_argument("--events", help="the events datasource")
    parser.add_argument("--profiles", help="the profiles datasource (Sugo: the uindex datasource)")
    parser.add_argument("--user-key", help="the user-key dimension (default distinct_id)")
    parser.add_argument("--event-name", help="the event-name dimension (default event)")
    parser.add_argument("--time-column", help="the event time column (default __time)")
    parser.add_argument("--column", action="append", default=[], metavar="TABLE.PROPERTY=[COLUMN:]KIND",
                        help="map a property: events.paid=boolean, profiles.signup=signup_ms:time; repeatable")
    parser.add_argument("--username", help="basic auth user")
    parser.add_argument("--password-env", metavar="VAR", help="the environment variable holding the password "
                                                             "(never given on the command line)")
    parser.add_argument("--timeout-ms", type=int, help="context.timeout of every query (default 60000)")
    parser.add_argument("--page-size", type=int, help="rows per page of a large answer (default 500000)")


def _druid_value(args) -> dict:
    """The backend setting the flags describe; ValueError naming a malformed flag."""
    value = {"kind": "druid"}
    for flag in ("brokers", "events", "profiles", "user_key", "event_name", "time_column", "username",
                 "timeout_ms", "page_size"):
        if getattr(args, flag) is not None:
            value[flag] = getattr(args, flag)
    if args.password_env:
        if args.password_env not in os.environ:
            raise ValueError(f"--password-env {args.password_env}: that environment variable is not set")
        value["password"] = os.environ[args.password_env]
    columns: dict = {}
    for text in args.column:
        target, sep, spec = text.partition("=")
        table, dot, prop = target.partition(".")
        if not sep or not dot or not prop or not spec:
            raise ValueError(f"--column {text}: expected TABLE.PROPERTY=[COLUMN:]KIND")
        column, colon, kind = spec.rpartition(":")
        columns.setdefault(table, {})[prop] = {"kind": kind, **({"column": column} if colon else {})}
    if columns:
        value["columns"] = columns
    return value


def _druid_backend(conn, args, settings, project) -> int:
    if args.show:
        print(json.dumps(backends.public_backend(projects.backend(conn, project["id"])), indent=1))
        return 0
    if args.embedded:
        projects.set_backend(conn, project["id"], {"kind": "embedded"})
        print(f"{args.project}: backend embedded")
        return 0
    try:
        shown = backends.set_druid_backend(conn, settings, project["id"], _druid_value(args))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    except Invalid as exc:
        flags = {"columns": "column", "password": "password-env"}
        for field, messages in exc.errors.items():
            head = field.split(".")[0]
            flag = flags.get(head, head.replace("_", "-"))
            print(f"--{flag}: {'; '.join(messages)} ({field})", file=sys.stderr)
        return 2
    print(f"{args.project}: backend druid")
    print(json.dumps(shown, indent=1))
    return 0


def _describe(kind: str, host: str, port: int, redis_db: int) -> str:
    return f"{kind} {format_address(host, port)}" + (f"/{redis_db}" if kind == "redis" else "")


def _check_app_key(args) -> str | None:
    """Why the set-app-key arguments are wrong, or None."""
    if args.clear:
        return "give an app key or --clear, not both" if args.app_key else None
    if not args.app_key:
        return "give an app key (or --clear)"
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.app_key):
        return "an app key is 1-64 letters, digits, '_', '.' or '-'"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.manage")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("projects", help="list the projects: id (ThinkingData's projectId), name, time zone, daily "
                   "refresh time")
    token = sub.add_parser("set-token", help="set (replace) the API token of a project")
    token.add_argument("project")
    token.add_argument("token")
    refresh = sub.add_parser("set-refresh-time", help="set the local time of day at which the project's daily "
                             "cohorts (Ark dynamic cohorts, ...) recompute")
    refresh.add_argument("project")
    refresh.add_argument("time", metavar="HH:MM")
    app_key = sub.add_parser("set-app-key", help="set the app key the project answers to (Ark's appKey header)")
    app_key.add_argument("project")
    app_key.add_argument("app_key", nargs="?")
    app_key.add_argument("--clear", action="store_true", help="remove the project's app key")
    allow = sub.add_parser("sugo-allow", aliases=["allow"], help="allow outbound targets for a project")
    _target_flags(allow)
    deny = sub.add_parser("sugo-deny", aliases=["deny"], help="remove outbound targets of a project")
    _target_flags(deny)
    deny.add_argument("--all", action="store_true", help="remove every target of the project")
    listing = sub.add_parser("sugo-targets", aliases=["targets"], help="list the outbound targets of a project")
    listing.add_argument("project")
    druid = sub.add_parser("druid-backend", help="point a project's rules at a Druid (or Sugo) cluster")
    _druid_flags(druid)
    args = parser.parse_args(argv)
    args.command = {"allow": "sugo-allow", "deny": "sugo-deny", "targets": "sugo-targets"}.get(args.command, args.command)
    settings = Settings.from_env()
    if args.command == "set-token" and len(args.token) < 8:
        print("a token needs at least 8 characters", file=sys.stderr)
        return 2
    if args.command == "set-refresh-time":
        try:
            args.time = parse_daily_time(args.time)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    if args.command == "set-app-key":
        error = _check_app_key(args)
        if error:
            print(error, file=sys.stderr)
            return 2
    if args.command == "projects":
        with db.connection(settings.engine.database_url) as conn:
            for row in projects.listing(conn):
                print(f"{row['id']}\t{row['name']}\t{row['timezone']}\t{row['daily_refresh_time']}")
        return 0
    with db.connection(settings.engine.database_url) as conn:
        project = projects.by_name(conn, args.project)
        if project is None:
            print(f"project {args.project!r} does not exist", file=sys.stderr)
            return 2
        if args.command == "druid-backend":
            return _druid_backend(conn, args, settings, project)
        if args.command == "set-refresh-time":
            projects.set_daily_refresh_time(conn, project["id"], args.time)
            moved = cohorts.set_daily_cron(conn, project["id"], daily_cron({"daily_refresh_time": args.time}))
            print(f"daily refresh time of {args.project} set to {args.time} ({project['timezone']});"
                  f" {moved} daily cohorts moved to it")
        elif args.command == "set-app-key":
            try:
                projects.set_app_key(conn, project["id"], None if args.clear else args.app_key)
            except psycopg2.errors.UniqueViolation:
                print(f"app key {args.app_key!r} belongs to another project", file=sys.stderr)
                return 2
            print(f"app key of {args.project} " + ("cleared" if args.clear else f"set to {args.app_key}"))
        elif args.command == "set-token":
            projects.set_token(conn, args.project, args.token)
            print(f"token set for project {args.project}")
        elif args.command == "sugo-targets":
            for row in sugo_targets.for_project(conn, project["id"]):
                print(_describe(row["kind"], row["host"], row["port"], row["db"]))
        else:
            try:
                targets = _targets(args, settings)
            except ValueError as exc:
                print(exc, file=sys.stderr)
                return 2
            if args.command == "sugo-deny" and args.all:
                print(f"removed {sugo_targets.remove_all(conn, project['id'])} Sugo targets of {args.project}")
                return 0
            if not targets:
                print("name at least one --redis, --hproxy, --broker, --import or --webhook", file=sys.stderr)
                return 2
            change = sugo_targets.add if args.command == "sugo-allow" else sugo_targets.remove
            for target in targets:
                changed = change(conn, project["id"], *target)
                verb = ("allowed" if changed else "already allowed") if args.command == "sugo-allow" else (
                    "removed" if changed else "was not allowed")
                print(f"{args.project}: {_describe(*target)} {verb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
