"""Faults the job system recovers from (issue 8 §4), each against real worker processes and a private
PostgreSQL and Redis that the test restarts (never the machine's shared servers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

import psycopg2
import pytest

from core.queue import broker_job_ids
from tests.servers import postgres_server, restart_redis, standalone_server
from tests.services import CELERY, ROOT, start_worker, stop, wait_for_worker, wait_until
from tests.tasks.conftest import ended, slow_definition, wait_for_job

QUEUE = "faults"
MAINTENANCE = "faults-maintenance"


class Services:
    """The private servers, the worker processes and the web app of this module."""

    def __init__(self, pg, redis_server, env, folder):
        self.pg, self.redis_server, self.env, self.folder = pg, redis_server, env, folder
        self.worker = self.maintenance = None

    @property
    def dsn(self) -> str:
        return self.env["COHORTS_DATABASE_URL"]

    def start_worker(self) -> None:
        self.worker = start_worker(self.env, "faults", self.folder / "worker.log")
        self.wait_for_worker("faults")

    def wait_for_worker(self, name: str) -> None:
        def answers():
            # This process's broker connection may be one the last Redis restart closed: try again.
            with contextlib.suppress(Exception):
                wait_for_worker(self.celery, name, timeout=5)
                return True
        wait_until(answers, timeout=30, what=f"worker {name} to answer")

    def start_maintenance(self) -> None:
        # The sweeper gets a worker of its own (on its own queue), so a busy compute queue cannot hold it.
        log = open(self.folder / "maintenance.log", "ab")
        self.maintenance = subprocess.Popen(
            [*CELERY, "worker", "--pool", "solo", "--queues", MAINTENANCE, "--hostname", "faults-maintenance@%h",
             "--loglevel", "INFO", "--without-mingle", "--without-gossip"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_for_worker("faults-maintenance")

    def worker_log(self) -> str:
        return (self.folder / "worker.log").read_text(errors="replace")

    def query(self, sql: str, params=()):
        conn = psycopg2.connect(self.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()

    def holder(self, job_id: int) -> tuple[int | None, str | None]:
        """(pid, token) of the process holding a computing job."""
        ((status, token),) = self.query("SELECT status, worker FROM jobs WHERE id = %s", (job_id,))
        return (int(token.split(":")[1]), token) if status == "computing" and token else (None, None)


@pytest.fixture(scope="module")
def services(service_env, tmp_path_factory):
    from app import create_app
    from cohort_engine import db
    from core.settings import Settings
    from tests.services import create_sample_project
    from workers.celery_app import create_celery

    folder = tmp_path_factory.mktemp("faults")
    with postgres_server() as pg, standalone_server() as redis_server:
        dsn = pg.url("cohorts_faults")
        db.migrate(dsn)
        env = {**service_env, "COHORTS_DATABASE_URL": dsn,
               "COHORTS_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
               "COHORTS_BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/1",
               "COHORTS_STORE_DIR": str(folder / "store"), "COHORTS_QUEUE": QUEUE, "COHORTS_KEY_PREFIX": "faults",
               "COHORTS_STALE_AFTER": "2", "COHORTS_MAX_ATTEMPTS": "2", "COHORTS_RETRY_DELAY": "1",
               "COHORTS_LOST_AFTER": "2",
               # Every job here must do its real work: the module's cohorts share one project and
               # snapshot, so a worker's leaf cache would answer a later job's leaves at once.
               "COHORTS_LEAF_CACHE_BYTES": "0"}
        s = Services(pg, redis_server, env, folder)
        s.settings = Settings.from_env(env)
        s.celery = create_celery(s.settings)
        s.app = create_app({"TESTING": True, "SETTINGS": s.settings, "CELERY": s.celery})
        s.client = s.app.test_client()
        _, s.project_id, token, _ = create_sample_project(dsn, s.settings.engine, folder / "sample", 3000, 300_000,
                                                          seed=11, prefix="f")
        s.headers = {"Authorization": f"Bearer {token}"}
        try:
            s.start_worker()
            s.start_maintenance()
            yield s
        finally:
            for process in (s.worker, s.maintenance):
                if process is not None:
                    stop(process)


@pytest.fixture
def sweeper(services):
    """Sends `cohorts.sweep` every second to the maintenance worker, as beat does (its routing is not under test)."""
    stopped = threading.Event()

    def send():
        while not stopped.wait(1.0):
            with contextlib.suppress(Exception):  # the broker may be restarting
                services.celery.send_task("cohorts.sweep", queue=MAINTENANCE)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    yield
    stopped.set()
    thread.join()


def submit(services, name, definition) -> dict:
    response = services.client.post("/api/v1/cohorts", json={"name": name, "definition": definition},
                                    headers=services.headers)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def wait(services, job_id, predicate=ended, timeout=60.0, what="the job to end"):
    return wait_for_job(services.client, services.headers, job_id, predicate, timeout=timeout, what=what)


def computing(job) -> bool:
    return job["status"] == "computing" and job["progress"] > 0


def thaw_and_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may be gone already
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)


PROFILE = {"type": "profile", "property": "user_level", "cmp": "gte", "values": [5]}


def test_reaped_job_jumps_the_backlog(services, sweeper):
    frozen_job = submit(services, "frozen-behind-backlog", slow_definition(30))["job"]["id"]
    wait(services, frozen_job, computing, what="the job to make progress")
    frozen, _ = services.holder(frozen_job)
    os.kill(frozen, signal.SIGSTOP)  # its heartbeat stops; the reaper requeues it after COHORTS_STALE_AFTER
    try:
        backlog = [submit(services, f"backlog-{i}", slow_definition(40))["job"]["id"] for i in range(8)]
        job = wait(services, frozen_job, timeout=60)
        waiting = services.query("SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status = 'new'", (backlog,))[0][0]
    finally:
        thaw_and_kill(frozen)
        for job_id in backlog:
            services.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=services.headers)
    assert job["status"] == "succeed" and job["attempts"] == 2, job
    # The reaped job ran next on the free worker process, not after the 8 jobs queued before its requeue.
    assert waiting >= 4, f"only {waiting} of 8 backlog jobs were still waiting when the reaped job ended"


def test_jobs_lost_with_a_redis_restart_run_within_a_minute(services, sweeper):
    stop(services.worker)  # nothing consumes: the jobs wait in the broker's queue
    try:
        job_ids = [submit(services, f"lost-{i}", PROFILE)["job"]["id"] for i in range(3)]
        assert set(job_ids) <= broker_job_ids(services.redis_server.client(db=1), [QUEUE])
        restart_redis(services.redis_server)  # no persistence: the queue is gone
        restarted = time.monotonic()
        assert not broker_job_ids(services.redis_server.client(db=1), [QUEUE])
    finally:
        services.start_worker()
    # They run within a minute of Redis returning, not after COHORTS_REQUEUE_AFTER (900 s).
    jobs = [wait(services, job_id, timeout=60) for job_id in job_ids]
    assert [j["status"] for j in jobs] == ["succeed"] * 3, jobs
    assert time.monotonic() - restarted < 60
    health = services.client.get("/healthz").get_json()
    assert health["checks"]["queue"] == {"ok": True, "stuck": 0}, health


def test_healthz_reports_jobs_new_without_a_broker_message(services):
    from cohort_engine import db
    from core.data import jobs

    # A job marked enqueued a minute ago whose message no broker holds: what a Redis restart leaves
    # when no sweeper runs (none does in this test).
    with db.connection(services.dsn) as conn:
        job, _ = jobs.insert(conn, services.project_id, "adhoc", params={"definition": PROFILE})
        with conn.cursor() as cur:
            cur.execute("UPDATE jobs SET enqueued_at = now() - interval '1 minute' WHERE id = %s", (job["id"],))
    try:
        health = services.client.get("/healthz")
        queue = health.get_json()["checks"]["queue"]
        assert health.status_code == 503 and queue["ok"] is False and queue["stuck"] == 1, queue
        assert queue["job_ids"] == [job["id"]]
    finally:
        with db.connection(services.dsn) as conn:
            jobs.fail(conn, job["id"], "cancelled", "test probe")


def test_published_bitmaps_survive_a_redis_restart(services):
    cohorts_redis = services.redis_server.client(db=0)
    created = submit(services, "durable", PROFILE)
    assert wait(services, created["job"]["id"])["status"] == "succeed"
    cohort_id = created["cohort"]["id"]
    members = services.client.get(f"/api/v1/cohorts/{cohort_id}/members", headers=services.headers)
    assert members.status_code == 200
    count = int(members.headers["X-Total-Count"])
    assert count > 0

    # A cohort referring to it computes after a restart (the executor reads the durable copy) ...
    restart_redis(services.redis_server)
    dependent = submit(services, "durable-dependent", {"type": "cohort", "cohort_id": cohort_id})
    job = wait(services, dependent["job"]["id"], timeout=60)
    assert job["status"] == "succeed" and job["result"]["count"] == count, job

    # ... and so do /members and a member lookup, refilling Redis on the way.
    restart_redis(services.redis_server)
    key = f"faults:p{services.project_id}:cohort:{cohort_id}"
    assert cohorts_redis.exists(key) == 0
    again = services.client.get(f"/api/v1/cohorts/{cohort_id}/members", headers=services.headers)
    assert again.status_code == 200 and again.data == members.data
    assert cohorts_redis.exists(key) == 1
    first = members.data.decode().splitlines()[0]
    lookup = services.client.get(f"/api/v1/cohorts/{cohort_id}/members/{first}", headers=services.headers)
    assert lookup.get_json() == {"member": True}


def test_pooled_connections_survive_a_postgres_restart(services):
    from cohort_engine import db

    created = submit(services, "after-pg-restart", PROFILE)
    job_id = created["job"]["id"]
    wait(services, job_id)
    # Several idle connections in this process's pool, as a busy web worker keeps them.
    held = [db.borrow(services.dsn) for _ in range(4)]
    for conn in held:
        db.give_back(services.dsn, conn)
    log_before = len(services.worker_log())
    services.pg.restart()
    answers = [services.client.get(f"/api/v1/jobs/{job_id}", headers=services.headers).status_code
               for _ in range(20)]
    assert answers == [200] * 20
    # The worker processes' pools too: the next job runs on its first try.
    refreshed = services.client.post(f"/api/v1/cohorts/{created['cohort']['id']}/refresh", headers=services.headers)
    job = wait(services, refreshed.get_json()["job"]["id"])
    assert job["status"] == "succeed" and job["attempts"] == 1, job
    assert "transient error" not in services.worker_log()[log_before:]


def test_job_computing_through_a_postgres_outage_keeps_its_attempt(services):
    job_id = submit(services, "through-outage", slow_definition(60))["job"]["id"]
    wait(services, job_id, computing, what="the job to make progress")
    services.pg.stop()
    time.sleep(1.5)  # the job's next progress write fails, and so does giving its claim back
    services.pg.start()
    job = wait(services, job_id, timeout=60)
    assert job["status"] == "succeed", job
    # Its retry took the claim back: no attempt lost, no wait for the heartbeat to go stale.
    assert job["attempts"] == 1, job


def test_busy_waits_do_not_spend_the_retry_budget_for_backend_errors(services):
    job_id = submit(services, "busy-then-outage", slow_definition(80))["job"]["id"]
    wait(services, job_id, computing, what="the job to make progress")
    first, first_token = services.holder(job_id)
    # A second delivery of the job (as after a redelivery): it waits while the first computes.
    duplicate = services.celery.send_task("cohorts.compute", args=[job_id]).id
    try:
        wait_until(lambda: services.worker_log().count(f"cohorts.compute[{duplicate}] retry") >= 2, timeout=30,
                   what="the duplicate delivery to wait on the busy job twice")
        os.kill(first, signal.SIGSTOP)  # the first holder hangs: the duplicate takes over once it is stale
        wait_until(lambda: services.holder(job_id)[1] not in (None, first_token)
                   and services.query("SELECT progress FROM jobs WHERE id = %s", (job_id,))[0][0] > 0,
                   timeout=30, what="the duplicate to take the job over")
        services.pg.stop()
        time.sleep(1.5)
        services.pg.start()
        job = wait(services, job_id, timeout=90)
    finally:
        thaw_and_kill(first)
    # Waiting on the busy job (2 retries, with COHORTS_MAX_ATTEMPTS=2) left the backend budget whole.
    assert job["status"] == "succeed" and job["attempts"] == 2, job
