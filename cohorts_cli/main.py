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


def request_body(args) -> dict | None:
    """The create body from the file and flags (None without a name); cohorts and tags alike."""
    document = read_json(args.definition)
    # A whole request body (with "definition") or only the definition; flags win over the body's fields.
    body = dict(document) if isinstance(document, dict) and "definition" in document else {"definition": document}
    name = args.name or body.get("name") or (Path(args.definition).stem if args.definition != "-" else None)
    if not name:
        return None
    body["name"] = name
    for field in ("display_name", "owner", "cron"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    if args.dynamic:
        body["dynamic"] = True
    return body


def submit(args, noun: str) -> int:
    """Create a cohort or a tag from the definition file; follow its job with --wait."""
    body = request_body(args)
    if body is None:
        note(f"error: give the {noun} a name with --name")
        return 2
    client = service(args)
    created = client.create_tag(body) if noun == "tag" else client.create_cohort(body)
    made, job = created[noun], created["job"]
    typed = f" ({made['value_type']})" if noun == "tag" else ""
    out(f"{noun} {made['id']} {made['name']}{typed}: job {job['id']} {job['status']}")
    if not args.wait:
        note(f"follow it: cohorts job {job['id']} --wait")
        return 0
    return follow(args, client, job["id"])


def cmd_submit(args) -> int:
    return submit(args, "cohort")


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
    return download(args, keys, total, f"cohort {args.id} members", "keys", f"keys of cohort {args.id}")


def download(args, lines, total: int | None, label: str, unit: str, what: str, header: str | None = None) -> int:
    """Write streamed lines to args.output (- for stdout) with a progress bar over total (rows, header excluded)."""
    if args.output == "-":
        with args.display.task(label, total, unit) as bar:
            write_lines(lines, sys.stdout, bar, header)
        return 0
    target = Path(args.output)
    partial = target.with_name(target.name + ".part")
    # Written aside and renamed when complete: an interrupted download never leaves a truncated FILE.
    try:
        with partial.open("w", encoding="utf-8") as stream, args.display.task(label, total, unit) as bar:
            written = write_lines(lines, stream, bar, header)
        if total is not None and written != total:
            note(f"error: the service announced {total} {unit} but sent {written}; nothing written to {target}")
            partial.unlink()
            return 1
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    out(f"wrote {written} {what} to {target}")
    return 0


def write_lines(lines, stream, bar, header: str | None = None) -> int:
    """Copy lines (the first one is the header when header is given: copied, not counted); the rows written."""
    written = 0
    for line in lines:
        if header is not None and written == 0 and line == header:
            stream.write(line + "\n")
            header = None
            continue
        stream.write(line + "\n")
        written += 1
        if written % 1000 == 0:
            bar.update(written)
    bar.update(written)
    return written


# -- tags --------------------------------------------------------------------------------------------


def cmd_tag_submit(args) -> int:
    return submit(args, "tag")


def cmd_tag_list(args) -> int:
    tags = service(args).tags(status=args.status)
    out(f"{'id':>7}  {'status':<9} {'type':<7} {'users':>10}  {'computed':<19}  name")
    for tag in tags:
        latest = tag["latest_version"] or {}
        count = latest.get("count")
        out(f"{tag['id']:>7}  {latest.get('status', '-'):<9} {tag['value_type']:<7} {'-' if count is None else count:>10}"
            f"  {(latest.get('computed_at') or '-')[:19]:<19}  {tag['name']}")
    return 0


def cmd_tag_refresh(args) -> int:
    client = service(args)
    answer = client.post(f"/api/v1/tags/{args.id}/refresh")
    job = answer["job"]
    out(f"tag {args.id}: job {job['id']} {job['status']}" + (" (joined the running one)" if answer["coalesced"] else ""))
    return follow(args, client, job["id"]) if args.wait else 0


def cmd_tag_cancel(args) -> int:
    job = service(args).post(f"/api/v1/tags/{args.id}/cancel")
    out(f"tag {args.id}: cancel requested for job {job['id']} ({job['status']})")
    return 0


def cmd_tag_values(args) -> int:
    total, lines = service(args).tag_values(args.id, args.value, args.min, args.max)
    return download(args, lines, total, f"tag {args.id} values", "rows", f"values of tag {args.id}",
                    header="key,value")


def cmd_tag_distribution(args) -> int:
    found = service(args).get(f"/api/v1/tags/{args.id}/distribution")
    out(f"tag {args.id} ({found['value_type']}), version {found['version_id']}:")
    for entry in found.get("values", []):
        out(f"  {entry['value']!s:<30} {entry['count']:>10}")
    for entry in found.get("bins", []):
        out(f"  [{entry['low']!s}, {entry['high']!s}){'':<10} {entry['count']:>10}")
    for key in ("min", "max"):
        if key in found:
            out(f"  {key}: {found[key]}")
    return 0


def add_tag_commands(sub, conn) -> None:
    tags = sub.add_parser("tags", help="tags: submit, list, refresh, cancel, values, distribution")
    commands = tags.add_subparsers(dest="tag_command", required=True, metavar="TAG_COMMAND")

    p = commands.add_parser("submit", parents=[conn], help="create a tag (and wait for its job)")
    p.add_argument("definition", help="JSON file (or -): a tag definition (docs/definition.md, Tags) or a whole body")
    submit_options(p)
    p.set_defaults(func=cmd_tag_submit)

    p = commands.add_parser("list", parents=[conn], help="the project's tags with their latest version")
    p.add_argument("--status", choices=["new", "computing", "succeed", "failed"])
    p.set_defaults(func=cmd_tag_list)

    p = commands.add_parser("refresh", parents=[conn], help="recompute a tag now")
    p.add_argument("id", type=int)
    p.add_argument("--wait", action="store_true")
    p.set_defaults(func=cmd_tag_refresh)

    p = commands.add_parser("cancel", parents=[conn], help="cancel a tag's running job")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_tag_cancel)

    p = commands.add_parser("values", parents=[conn], help="download key,value rows (CSV with a header)")
    p.add_argument("id", type=int)
    p.add_argument("-o", "--output", required=True, help="file to write (- for stdout)")
    p.add_argument("--value", action="append", default=[], help="only users with this value (repeatable)")
    p.add_argument("--min", help="only values >= this")
    p.add_argument("--max", help="only values < this")
    p.set_defaults(func=cmd_tag_values)

    p = commands.add_parser("distribution", parents=[conn], help="users per value (or per bin)")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_tag_distribution)


def submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="its name (default: the body's name, else the file's stem)")
    p.add_argument("--display-name", dest="display_name")
    p.add_argument("--owner")
    p.add_argument("--dynamic", action="store_true", help="recompute on a schedule (needs --cron)")
    p.add_argument("--cron", help="cron expression of a dynamic one, e.g. '0 3 * * *'")
    p.add_argument("--wait", action="store_true", help="show the job's progress and print the count")


def add_client_commands(sub) -> None:
    conn = connection_options()

    p = sub.add_parser("submit", parents=[conn], help="create a cohort over the API (and wait for its count)")
    p.add_argument("definition", help="JSON file (or - for stdin): a rule tree, or a whole POST /api/v1/cohorts body")
    submit_options(p)
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

    add_tag_commands(sub, conn)


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


CLIENT_COMMANDS = {"submit", "jobs", "job", "cancel", "list", "members", "tags"}


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
