"""Service administration: `python -m app.manage set-token PROJECT TOKEN`."""

from __future__ import annotations

import argparse
import sys

from app.data import projects
from app.settings import Settings
from cohort_engine import db


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.manage")
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("set-token", help="set (replace) the API token of a project")
    token.add_argument("project")
    token.add_argument("token")
    args = parser.parse_args(argv)
    if len(args.token) < 8:
        print("a token needs at least 8 characters", file=sys.stderr)
        return 2
    with db.connection(Settings.from_env().engine.database_url) as conn:
        if projects.by_name(conn, args.project) is None:
            print(f"project {args.project!r} does not exist", file=sys.stderr)
            return 2
        projects.set_token(conn, args.project, args.token)
    print(f"token set for project {args.project}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
