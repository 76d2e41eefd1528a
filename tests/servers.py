"""Private PostgreSQL and Redis servers that a fault test may restart (never the machine's shared ones).

Each server runs on a free loopback port under a temporary directory, with no persistence for
Redis (like the project's own Redis), and is torn down when its context manager ends.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg2

from tests.redis_topologies import HOST, RedisServer, _wait_until, standalone_server


def _pg_bin() -> str:
    """The PostgreSQL server binaries: initdb on PATH, else the newest Debian install."""
    found = shutil.which("initdb") or max(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                                          key=lambda p: int(p.split("/")[4]), default="initdb")
    return os.path.dirname(os.path.realpath(found))


PG_BIN = _pg_bin()


def _as_postgres(args: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: run them as the postgres user then.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class PostgresServer:
    directory: str
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(_as_postgres([os.path.join(PG_BIN, "pg_ctl"), "-D", self.directory + "/data", "-w", "-t", "60",
                                     *args]), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        self._ctl("-l", self.directory + "/data/server.log", "-o",
                  f"-p {self.port} -k {self.directory} -c listen_addresses={HOST} -c fsync=off"
                  " -c synchronous_commit=off -c full_page_writes=off", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "stop")

    def restart(self) -> None:
        """Stop (fast: every backend is terminated) and start again on the same port, like a server restart."""
        self.stop()
        self.start()

    def answers(self) -> bool:
        try:
            psycopg2.connect(self.url(), connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster (trust auth, user postgres) on a free loopback port."""
    from tests.redis_topologies import free_port

    directory = tempfile.mkdtemp(prefix="pg-private-")
    os.chmod(directory, 0o777)  # the postgres user writes its socket and data here
    server = PostgresServer(directory, free_port())
    subprocess.run(_as_postgres([os.path.join(PG_BIN, "initdb"), "-D", directory + "/data", "-U", "postgres",
                                 "--auth=trust", "-N", "-E", "UTF8"]),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


def restart_redis(server: RedisServer) -> None:
    """Kill a private Redis and start it again on the same port and config: empty, as after a restart."""
    server.stop()
    conf = os.path.join(server.directory, "redis.conf")
    process = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", conf],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from tests import redis_topologies

    redis_topologies._live_processes.add(process)
    server.process = process
    _wait_until(lambda: server.client().ping(), f"redis restarted on port {server.port}", process)


__all__ = ["PostgresServer", "postgres_server", "restart_redis", "standalone_server"]


class ServedFile:
    """A small real HTTP server answering GET with `body` (changeable), counting the requests it got.

    Stands in for a customer's file server (routine ID imports, docs/imports.md).
    """

    def __init__(self, host: str = "127.0.0.1"):
        import http.server
        import threading

        served = self
        self.body = b""
        self.status = 200
        self.requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                served.requests.append(self.path)
                self.send_response(served.status)
                self.send_header("Content-Type", "text/csv")
                self.send_header("Content-Length", str(len(served.body)))
                self.end_headers()
                self.wfile.write(served.body)

            def log_message(self, *args):
                """Silent: the test output shows failures, not every request these servers answer."""

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.host, self.port = host, self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/ids.csv") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Received:
    at: float  # time.monotonic() when the request arrived
    path: str
    headers: dict
    body: bytes


class WebhookReceiver:
    """A real HTTP server standing in for a client's webhook endpoint: records every POST and answers the
    scripted statuses in order (then 200)."""

    def __init__(self, statuses=()):
        import http.server
        import threading

        self.statuses = list(statuses)
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                import time

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.received.append(Received(time.monotonic(), self.path, dict(self.headers), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                """Silent: the test output shows failures, not every request these servers answer."""

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
