"""Real Celery worker and beat processes for tests (subprocesses, killed at teardown)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELERY = [sys.executable, "-m", "celery", "-A", "workers.main"]


def start_worker(env: dict, name: str, log_path: Path, concurrency: int = 2, extra_env: dict | None = None,
                 queues: str | None = None, loglevel: str = "INFO"):
    """A prefork worker on queues (default: the env's COHORTS_QUEUE), in its own process group."""
    log = open(log_path, "ab")
    env = {**env, **(extra_env or {})}
    queues = queues or env.get("COHORTS_QUEUE", "cohorts")
    return subprocess.Popen(
        [*CELERY, "worker", "--pool", "prefork", "--concurrency", str(concurrency), "--queues", queues,
         "--hostname", f"{name}@%h", "--loglevel", loglevel, "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def start_maintenance_worker(env: dict, log_path: Path, name: str = "maintenance", loglevel: str = "INFO"):
    """The Procfile's `maintenance` process: one child consuming only the sweep/schedule queue."""
    return start_worker(env, name, log_path, concurrency=1,
                        queues=env.get("COHORTS_MAINTENANCE_QUEUE", "cohorts.maintenance"), loglevel=loglevel)


def start_beat(env: dict, schedule_path: Path, log_path: Path, loglevel: str = "INFO"):
    """A beat process; at DEBUG its log also shows each periodic send (quiet at INFO: docs/jobs.md)."""
    log = open(log_path, "ab")
    return subprocess.Popen(
        [*CELERY, "beat", "--loglevel", loglevel, "--schedule", str(schedule_path)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_worker(celery_app, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = celery_app.control.ping(timeout=0.5) or []
        if any(worker.startswith(name + "@") for reply in replies for worker in reply):
            return
    raise TimeoutError(f"worker {name} did not answer a ping within {timeout}s")


def stop(process, sig=signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop a process group: sig first, SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        return  # already gone


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll predicate until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def create_token_project(database_url: str, prefix: str = "t") -> tuple[str, int, str]:
    """A new project with an API token: (name, id, token)."""
    import uuid

    from cohort_engine import db
    from core.data.projects import set_token

    name = prefix + uuid.uuid4().hex[:10]
    token = "tok-" + uuid.uuid4().hex
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO projects (name) VALUES (%s) RETURNING id", (name,))
        project_id = cur.fetchone()[0]
        set_token(conn, name, token)
    return name, project_id, token


def create_sample_project(database_url: str, engine_config, folder, users: int, events: int, seed: int,
                          prefix: str = "s") -> tuple[str, int, str, dict]:
    """A token project holding cohort_engine.sample data: (name, id, token, written files)."""
    from cohort_engine.project import ProjectEngine
    from cohort_engine.sample import write_sample

    name, project_id, token = create_token_project(database_url, prefix)
    written = write_sample(folder, users, events, seed=seed)
    engine = ProjectEngine(engine_config, name)
    engine.ingest_users(written["users"])
    for part in written["events"]:
        engine.ingest_events(part)
    return name, project_id, token, written


# A Redis database that is a Sugo target, never one of the service's own (COHORTS_TEST_REDIS_URL,
# COHORTS_TEST_BROKER_URL): Sugo requests may not write into those.
SUGO_REDIS_URL = os.environ.get("COHORTS_TEST_SUGO_REDIS_URL", "redis://127.0.0.1:6379/3")


def sugo_redis_target() -> tuple[str, int]:
    """("host:port", db) of SUGO_REDIS_URL, as a dataConfig names it."""
    from urllib.parse import urlsplit

    parts = urlsplit(SUGO_REDIS_URL)
    return f"{parts.hostname}:{parts.port or 6379}", int(parts.path.strip("/") or 0)


def allow_sugo_targets(database_url: str, project_id: int, redis=(), hproxy=(), broker=()) -> None:
    """Allow Sugo targets for a project as `python -m core.manage sugo-allow` does ("host:port[/db]" strings)."""
    from cohort_engine import db
    from core.data import sugo_targets
    from dialects.sugo.schemas import parse_target

    with db.connection(database_url) as conn:
        for kind, values in (("redis", redis), ("hproxy", hproxy), ("broker", broker)):
            for text in values:
                sugo_targets.add(conn, project_id, kind, *parse_target(kind, text))


class LiveServer:
    """The Flask app served over real HTTP by werkzeug in a thread (for clients that are not the test client)."""

    def __init__(self, app):
        import threading

        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="live-server", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
