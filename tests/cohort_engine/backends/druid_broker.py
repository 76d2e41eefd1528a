"""The service's own embedded Druid-compatible broker (cohort_engine.broker) served over real HTTP in a thread.

The Druid backend tests talk to it as to a cluster's broker: POST /druid/v2 answers from a
source project's embedded store, DELETE /druid/v2/{queryId} is recorded. A test that needs the
broker to fail sets `fail` to a callable(query) -> (status, body or bytes), "drop" (close the
connection without answering) or None (answer normally).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cohort_engine.backends.embedded.store import Snapshot
from cohort_engine.broker import DataSources, DataSourceSpec, respond
from cohort_engine.broker.embedded import EngineProjectAccess
from cohort_engine.project import ProjectEngine

EVENTS, PROFILES = "events_ds", "profiles_ds"


class _SharedSnapshot(Snapshot):
    """A snapshot whose DuckDB views are built once: each query gets a cursor (its own connection) on them.

    Only connection setup is shared (about 16 ms a query here, most of an embedded broker query on
    this small data); every query still runs through the broker's own executor.
    """

    def __init__(self, snapshot: Snapshot):
        super().__init__(snapshot.root, snapshot.manifest, snapshot.limits)
        self._shared = None
        self._lock = threading.Lock()

    def connect(self):
        with self._lock:
            if self._shared is None:
                self._shared = super().connect()
            return self._shared.cursor()


class _CachedAccess(EngineProjectAccess):
    """The project's store, one shared snapshot per manifest version."""

    def __init__(self, engine):
        super().__init__(engine)
        self._snapshot: _SharedSnapshot | None = None

    def snapshot(self) -> Snapshot:
        current = self.engine.store.snapshot()
        if self._snapshot is None or self._snapshot.manifest.version != current.manifest.version:
            self._snapshot = _SharedSnapshot(current)
        return self._snapshot


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client that went away (timeout, cancel, dropped connection tests) is expected here, not an error."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class HttpBroker:
    """A thread-served /druid/v2 over a source project's store; records every query and cancel."""

    def __init__(self, config, source_project: str, key: str = "distinct_id"):
        self.datasources = DataSources(lambda project: _CachedAccess(ProjectEngine(config, project)), {
            EVENTS: DataSourceSpec(source_project, "events", key),
            PROFILES: DataSourceSpec(source_project, "users", key)})
        self.queries: list[dict] = []
        self.cancels: list[str] = []
        self.fail = None
        self.on_delete = None  # callable(query_id), called after a DELETE is recorded
        broker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def log_message(self, *args):
                """Quiet: tests read the recorded queries, not the access log."""

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                query = json.loads(raw)
                broker.queries.append(query)
                answer = broker.fail(query) if broker.fail else None
                if answer == "drop":
                    # A broker that dies mid-request: the connection closes with no answer at all.
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if answer is None:
                    answer = respond(raw, broker.datasources)
                self._answer(*answer)

            def do_DELETE(self):
                broker.cancels.append(self.path.rstrip("/").rsplit("/", 1)[-1])
                if broker.on_delete:
                    broker.on_delete(broker.cancels[-1])
                self._answer(202, b"")

            def _answer(self, status, body):
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def backend(self, **extra) -> dict:
        """A druid backend setting pointing at this broker."""
        return {"kind": "druid", "brokers": f"http://{self.address}/druid/v2", "events": EVENTS,
                "profiles": PROFILES, **extra}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
