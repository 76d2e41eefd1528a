"""`cohorts`: the service's REST client (submit, jobs, members, ...) and the engine's local commands.

Client commands talk to a running service (--url / COHORTS_URL, --token / COHORTS_TOKEN) and show
a live progress bar fed by the job's progress; the engine commands (migrate, sample, ingest,
compute, demo) work on the local stores as before. docs/cli.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from cohort_engine import cli as engine_cli
from cohorts_cli.client import DEFAULT_URL, ServiceClient, ServiceError
from cohorts_cli.progress import MODES, Display

INTERRUPTED = 130


def connection_options() -> argparse.ArgumentParser:
    """--url and --token, shared by every client command (the environment gives their defaults)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--url", default=os.environ.get("COHORTS_URL", DEFAULT_URL),
                        help=f"the service's address (env COHORTS_URL, default {DEFAULT_URL})")
    parent.add_argument("--token", default=os.environ.get("COHORTS_TOKEN"),
                        help="the project's API token (env COHORTS_TOKEN)")
    parent.add_argument("--poll-interval", type=float, default=0.25, metavar="SECONDS",
                        help="how often --wait asks for the job's progress at first (default 0.25)")
    return parent


def service(args) -> ServiceClient:
    return ServiceClient(args.url, args.token)


def out(text: str = "") -> None:
    print(text, flush=True)


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- waiting for a job -------------------------------------------------------------------------------


def wait_for(args, client: ServiceClient, job_id: int) -> dict:
    """Follow a job with a progress bar until it ends; Ctrl-C stops only the waiting (KeyboardInterrupt)."""
    with args.display.task(f"job {job_id}", 100, "%") as bar:
        return client.wait(job_id, lambda job: bar.update(job["progress"], status=job["status"]),
                           interval=args.poll_interval)


def stopped_waiting(job_id: int) -> int:
    note(f"\nstopped waiting; job {job_id} keeps running on the service (nothing was cancelled).\n"
         f"  follow it again: cohorts job {job_id} --wait\n"
         f"  cancel it:       cohorts cancel {job_id}")
    return INTERRUPTED


def report_end(job: dict) -> int:
    """Print how a job ended: its count (stdout) or its error (stderr); the exit status."""
    if job["status"] == "succeed":
        count = (job.get("result") or {}).get("count")
        out(f"job {job['id']} succeed: {count} users" if count is not None else f"job {job['id']} succeed")
        return 0
    note(f"job {job['id']} failed: {job['error_code']}: {job['error_message']}")
    return 1


def follow(args, client: ServiceClient, job_id: int) -> int:
    try:
        job = wait_for(args, client, job_id)
    except KeyboardInterrupt:
        return stopped_waiting(job_id)
    return report_end(job)


# -- client commands ---------------------------------------------------------------------------------


def read_json(path: str):
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return json.loads(text)


def cmd_submit(args) -> int:
    document = read_json(args.definition)
    # A whole request body (with "definition") or only the rule tree; flags win over the body's fields.
    body = dict(document) if isinstance(document, dict) and "definition" in document else {"definition": document}
    name = args.name or body.get("name") or (Path(args.definition).stem if args.definition != "-" else None)
    if not name:
        note("error: give the cohort a name with --name")
        return 2
    body["name"] = name
    for field in ("display_name", "owner", "cron"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    if args.dynamic:
        body["dynamic"] = True
    client = service(args)
    created = client.create_cohort(body)
    cohort, job = created["cohort"], created["job"]
    out(f"cohort {cohort['id']} {cohort['name']}: job {job['id']} {job['status']}")
    if not args.wait:
        note(f"follow it: cohorts job {job['id']} --wait")
        return 0
    return follow(args, client, job["id"])


def job_line(job: dict) -> str:
    error = f" {job['error_code']}: {job['error_message']}" if job["status"] == "failed" else ""
    count = (job.get("result") or {}).get("count")
    counted = f" count={count}" if count is not None and job["status"] == "succeed" else ""
    cohort = job["cohort_id"] if job["cohort_id"] is not None else "-"
    return (f"{job['id']:>8}  {job['kind']:<12} {cohort!s:>7}  {job['status']:<9} {job['progress']:>3}%  "
            f"{job['created_at'][:19]}{counted}{error}")


def cmd_jobs(args) -> int:
    jobs = service(args).jobs(status=args.status, cohort_id=args.cohort, per_page=args.limit)
    out(f"{'job':>8}  {'kind':<12} {'cohort':>7}  {'status':<9} {'prog':>4}  created")
    for job in jobs:
        out(job_line(job))
    return 0


def cmd_job(args) -> int:
    client = service(args)
    if args.wait:  # to its end (at once if it has ended), exit status 1 if it failed
        return follow(args, client, args.id)
    out(job_line(client.job(args.id)))
    return 0


def cmd_cancel(args) -> int:
    job = service(args).cancel(args.id)
    out(f"job {job['id']}: cancel requested ({job['status']}); a computing job stops at its next step")
    return 0


def cmd_list(args) -> int:
    cohorts = service(args).cohorts(status=args.status)
    out(f"{'id':>7}  {'status':<9} {'count':>10}  {'computed':<19}  name")
    for cohort in cohorts:
        latest = cohort["latest_version"] or {}
        count = latest.get("count")
        out(f"{cohort['id']:>7}  {latest.get('status', '-'):<9} {'-' if count is None else count:>10}  "
            f"{(latest.get('computed_at') or '-')[:19]:<19}  {cohort['name']}")
    return 0


def cmd_members(args) -> int:
    total, keys = service(args).members(args.id)
    if args.output == "-":
        with args.display.task(f"cohort {args.id} members", total, "keys") as bar:
            written = write_keys(keys, sys.stdout, bar)
        return 0
    target = Path(args.output)
    partial = target.with_name(target.name + ".part")
    # Written aside and renamed when complete: an interrupted download never leaves a truncated FILE.
    try:
        with partial.open("w", encoding="utf-8") as stream, \
                args.display.task(f"cohort {args.id} members", total, "keys") as bar:
            written = write_keys(keys, stream, bar)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if total is not None and written != total:
        note(f"error: the service announced {total} keys but sent {written}; {target} is incomplete")
        return 1
    out(f"wrote {written} keys of cohort {args.id} to {target}")
    return 0


def write_keys(keys, stream, bar) -> int:
    written = 0
    for key in keys:
        stream.write(key + "\n")
        written += 1
        if written % 1000 == 0:
            bar.update(written)
    bar.update(written)
    return written


def add_client_commands(sub) -> None:
    conn = connection_options()

    p = sub.add_parser("submit", parents=[conn], help="create a cohort over the API (and wait for its count)")
    p.add_argument("definition", help="JSON file (or - for stdin): a rule tree, or a whole POST /api/v1/cohorts body")
    p.add_argument("--name", help="cohort name (default: the body's name, else the file's stem)")
    p.add_argument("--display-name", dest="display_name")
    p.add_argument("--owner")
    p.add_argument("--dynamic", action="store_true", help="recompute on a schedule (needs --cron)")
    p.add_argument("--cron", help="cron expression of a dynamic cohort, e.g. '0 3 * * *'")
    p.add_argument("--wait", action="store_true", help="show the job's progress and print the count")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", parents=[conn], help="list the project's jobs, newest first")
    p.add_argument("--status", choices=["new", "computing", "succeed", "failed"])
    p.add_argument("--cohort", type=int)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("job", parents=[conn], help="a job's status (--wait: follow its progress to the end)")
    p.add_argument("id", type=int)
    p.add_argument("--wait", action="store_true")
    p.set_defaults(func=cmd_job)

    p = sub.add_parser("cancel", parents=[conn], help="cancel a job")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("list", parents=[conn], help="list the project's cohorts with their latest count")
    p.add_argument("--status", choices=["new", "computing", "succeed", "failed"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("members", parents=[conn], help="download a cohort's member keys (one a line)")
    p.add_argument("id", type=int)
    p.add_argument("-o", "--output", required=True, help="file to write (- for stdout)")
    p.set_defaults(func=cmd_members)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cohorts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    engine_cli.add_global_options(parser)
    parser.add_argument("--progress", choices=MODES, default=os.environ.get("COHORTS_PROGRESS", "auto"),
                        help="progress display: a bar on a terminal, plain lines otherwise (auto), or none")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_client_commands(sub)
    engine_cli.add_commands(sub)
    return parser


CLIENT_COMMANDS = {"submit", "jobs", "job", "cancel", "list", "members"}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args.display = Display(args.progress)
    if args.command not in CLIENT_COMMANDS:
        args.progress = args.display.task  # the engine's commands report to it (cohort_engine.cli.progress_of)
        return engine_cli.run(args)
    try:
        return args.func(args)
    except ServiceError as exc:
        return print_service_error(exc)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        note(f"error: not valid JSON: {exc}")
    except OSError as exc:
        note(f"error: {exc.strerror}: {exc.filename}")
    except KeyboardInterrupt:
        note("interrupted")
        return INTERRUPTED
    return 2


def print_service_error(exc: ServiceError) -> int:
    status = f"{exc.status} " if exc.status else ""
    note(f"error: {status}{exc.message}")
    for path, messages in sorted(exc.errors.items()):
        note(f"  {path}: {'; '.join(messages) if isinstance(messages, list) else messages}")
    if exc.status == 401:
        note("  give the project's token with --token or COHORTS_TOKEN")
    return 2


if __name__ == "__main__":
    sys.exit(main())
