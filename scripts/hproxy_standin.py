"""A tiny stand-in for Sugo's hproxy, so the README's batchUpdate examples run with `make run`.

It answers `POST /druid/proxy/batchupdate/<dataSource>` as hproxy does, `{"success": N, "failed":
0, "errors": []}` for a JSON array of N rows `{"values": {...}, "appendFlags": {...}}`, and keeps
the last rows per dataSource in memory: `GET /druid/proxy/batchupdate/<dataSource>` shows them.
It stores nothing else and is no tag store; for a real one, point hproxyUrl at Sugo's hproxy.

    python scripts/hproxy_standin.py [--host 127.0.0.1] [--port 8085]
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/druid/proxy/batchupdate/"
KEPT_ROWS = 1000
# hproxy takes batches of at most 1000 rows; a little slack, then refuse rather than buffer anything.
MAX_BODY_BYTES = 16 * 1024 * 1024

log = logging.getLogger("hproxy-standin")


class Store:
    """The last KEPT_ROWS rows received per dataSource, and how many rows each has received."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rows: dict[str, list] = {}
        self.counts: dict[str, int] = {}

    def add(self, data_source: str, rows: list) -> None:
        with self.lock:
            kept = self.rows.setdefault(data_source, [])
            kept.extend(rows)
            del kept[:-KEPT_ROWS]
            self.counts[data_source] = self.counts.get(data_source, 0) + len(rows)

    def show(self, data_source: str) -> dict:
        with self.lock:
            return {"dataSource": data_source, "received": self.counts.get(data_source, 0),
                    "lastRows": list(self.rows.get(data_source, []))}


def row_error(row) -> str | None:
    if not isinstance(row, dict) or not isinstance(row.get("values"), dict):
        return "each row must be an object with a values object"
    if not isinstance(row.get("appendFlags", {}), dict):
        return "appendFlags must be an object"
    return None


def make_handler(store: Store) -> type:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body) -> None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _data_source(self) -> str | None:
            path = self.path.split("?", 1)[0]
            name = path[len(PREFIX):] if path.startswith(PREFIX) else ""
            return name if name and "/" not in name else None

        def do_GET(self):
            data_source = self._data_source()
            if data_source is None:
                self._answer(404, {"error": f"POST rows to {PREFIX}<dataSource>"})
                return
            self._answer(200, store.show(data_source))

        def do_POST(self):
            data_source = self._data_source()
            if data_source is None:
                self._answer(404, {"error": f"POST rows to {PREFIX}<dataSource>"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY_BYTES:
                self._answer(400 if length <= 0 else 413, {"error": "a JSON array of rows is required"})
                return
            try:
                rows = json.loads(self.rfile.read(length))
            except ValueError:
                self._answer(400, {"error": "the body is not JSON"})
                return
            if not isinstance(rows, list):
                self._answer(400, {"error": "the body must be a JSON array of rows"})
                return
            errors = [f"row {i}: {e}" for i, e in ((i, row_error(r)) for i, r in enumerate(rows)) if e]
            good = [r for r in rows if row_error(r) is None]
            store.add(data_source, good)
            log.info("batch data_source=%s rows=%d failed=%d", data_source, len(good), len(errors))
            self._answer(200, {"success": len(good), "failed": len(errors), "errors": errors[:100]})

        def log_message(self, *args):
            """Quiet: each batch is logged once above, as key=value fields."""

    return Handler


def serve(host: str, port: int) -> ThreadingHTTPServer:
    """The stand-in listening on host:port (not yet serving: call serve_forever)."""
    return ThreadingHTTPServer((host, port), make_handler(Store()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8085)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = serve(args.host, args.port)
    log.info("listening address=%s:%d path=%s<dataSource>", args.host, args.port, PREFIX)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
