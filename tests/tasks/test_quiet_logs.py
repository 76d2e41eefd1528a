"""Beat's periodic sweep/schedule runs leave no INFO line when they did nothing, and no Flower task events.

Real processes on a database and queues of their own (so that nothing another test left behind gives
the sweep something to do): a maintenance worker at DEBUG (its DEBUG lines prove the runs happened)
and a beat at INFO, as in the Procfile.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import uuid

import psycopg2
import pytest
import redis as redis_lib

from cohort_engine import db
from core.data import jobs
from tests.conftest import TEST_BROKER_URL, TEST_DATABASE_URL, _drop_database
from tests.services import start_beat, start_maintenance_worker, stop, wait_for_worker, wait_until

LEVELS = re.compile(r"\b(INFO|WARNING|ERROR|CRITICAL)\b")


@pytest.fixture(scope="module")
def quiet_service(service_env, celery_app, tmp_path_factory):
    """(env, worker log, beat log, database url, events seen) of a private maintenance worker and beat."""
    url = TEST_DATABASE_URL + "_quiet"
    _drop_database(url)
    db.migrate(url)
    tag = uuid.uuid4().hex[:8]
    env = {**service_env, "COHORTS_DATABASE_URL": url, "COHORTS_QUEUE": f"quiet-{tag}",
           "COHORTS_MAINTENANCE_QUEUE": f"quiet-maintenance-{tag}", "COHORTS_SWEEP_INTERVAL": "0.4",
           "COHORTS_SCHEDULE_INTERVAL": "0.4"}
    folder = tmp_path_factory.mktemp("quiet")
    events = EventLog(celery_app, f"quiet{tag}@")
    worker = start_maintenance_worker(env, folder / "worker.log", name=f"quiet{tag}", loglevel="DEBUG")
    beat = None
    try:
        wait_for_worker(celery_app, f"quiet{tag}")
        beat = start_beat(env, folder / "schedule", folder / "beat.log")
        yield env, folder / "worker.log", folder / "beat.log", url, events
    finally:
        # Cold shutdown, both at once: nothing of theirs is worth waiting for.
        for process in (beat, worker):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGQUIT)
        for process in (beat, worker):
            if process is not None:
                stop(process)
        events.stop()
        client = redis_lib.Redis.from_url(TEST_BROKER_URL)
        client.delete(env["COHORTS_QUEUE"], env["COHORTS_MAINTENANCE_QUEUE"])
        client.close()
        _drop_database(url)


class EventLog:
    """The task events the broker carries from one worker (what Flower would list), gathered in a thread."""

    def __init__(self, celery_app, hostname_prefix: str):
        self.seen: list[dict] = []
        self.prefix = hostname_prefix
        self.connection = celery_app.connection_for_read()
        self.receiver = celery_app.events.Receiver(self.connection, handlers={"*": self.on_event})
        self.thread = threading.Thread(target=self.receiver.capture, kwargs={"limit": None, "timeout": None},
                                       daemon=True)
        self.thread.start()

    def on_event(self, event: dict) -> None:
        if event.get("type", "").startswith("task-") and event.get("hostname", "").startswith(self.prefix):
            self.seen.append(event)

    def stop(self) -> None:
        self.receiver.should_stop = True
        self.thread.join(timeout=5)
        self.connection.release()


def runs(log_path, task: str) -> int:
    return len(re.findall(rf"(?:DEBUG|INFO).*Task {re.escape(task)}\[[^\]]+\] succeeded", log_path.read_text()))


def test_maintenance_runs_that_do_nothing_log_nothing_at_info(quiet_service, celery_app):
    env, worker_log, beat_log, _, events = quiet_service
    start = len(worker_log.read_text())
    wait_until(lambda: runs(worker_log, "cohorts.sweep") >= 2 and runs(worker_log, "cohorts.schedule") >= 2,
               timeout=30, what="beat's sweep and schedule runs on the private worker")
    # A marker task on the same queue: its events arrive, so the receiver works and the runs sent none.
    celery_app.send_task("cohorts.ping", queue=env["COHORTS_MAINTENANCE_QUEUE"])
    wait_until(lambda: any(e["type"] == "task-received" and e.get("name") == "cohorts.ping" for e in events.seen),
               what="the marker's task event")
    new = worker_log.read_text()[start:]
    noisy = [line for line in new.splitlines() if LEVELS.search(line) and "cohorts.ping" not in line]
    assert noisy == [], "INFO lines from runs that did nothing:\n" + "\n".join(noisy)
    assert "Sending due task" not in beat_log.read_text()
    names = {e.get("name") for e in events.seen if e["type"] == "task-received"}
    assert names == {"cohorts.ping"}, names


def test_a_sweep_that_did_something_says_so_with_key_value_fields(quiet_service):
    _, worker_log, _, url, _ = quiet_service
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO projects (name) VALUES ('quiet') RETURNING id")
        job, _ = jobs.insert(conn, cur.fetchone()[0], "create")
        # Never sent, and older than a sweep interval: the next sweep sends it.
        jobs.unmark_enqueued(conn, [job["id"]])
        cur.execute("UPDATE jobs SET created_at = now() - interval '1 minute' WHERE id = %s", (job["id"],))
    conn.close()
    line = wait_until(lambda: re.search(rf"INFO.*sweep requeued=\[{job['id']}\] lost=\[\] failed=\[\]",
                                        worker_log.read_text()), what="the sweep's line")
    assert line
