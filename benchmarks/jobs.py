"""Job-system benchmark: cohort jobs over HTTP vs raw Celery tasks, and the job-status endpoint under load."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
import uuid

import redis as redis_lib
import requests

from cohort_engine import db
from core.data.projects import set_token

from . import REPO, BenchContext, Row, section

PORT = 6071
# Overridable, so that benches run side by side (e.g. the sugo section's own Redis databases) do not collide.
BROKER = os.environ.get("BENCH_JOBS_BROKER_URL", "redis://127.0.0.1:6379/9")
BITMAPS = os.environ.get("BENCH_JOBS_REDIS_URL", "redis://127.0.0.1:6379/8")
SUBMITTERS = 4


def _env(ctx: BenchContext) -> dict:
    return {**os.environ, "COHORTS_DATABASE_URL": ctx.database_url, "COHORTS_BROKER_URL": BROKER,
            "COHORTS_REDIS_URL": BITMAPS, "COHORTS_STORE_DIR": str(ctx.work_dir / "store"),
            "COHORTS_KEY_PREFIX": "cohorts-bench", "COHORTS_QUEUE": "bench",
            "COHORTS_MAINTENANCE_QUEUE": "bench.maintenance"}


def _start(env: dict, args: list[str], log_name: str, ctx: BenchContext) -> subprocess.Popen:
    log = open(ctx.work_dir / log_name, "ab")
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def start_maintenance_worker(env: dict, name: str, ctx: BenchContext) -> subprocess.Popen:
    """The Procfile's maintenance process (sweep and schedule) on the bench's own maintenance queue.

    The bench deploys as production does, so /healthz (which wants both queues consumed) answers 200.
    """
    return _start(env, [sys.executable, "-m", "celery", "-A", "workers.main", "worker", "--pool", "prefork",
                        "--concurrency", "1", "--queues", env["COHORTS_MAINTENANCE_QUEUE"], "--loglevel", "WARNING",
                        "--without-mingle", "--without-gossip", "--hostname", f"{name}@%h"], f"{name}.log", ctx)


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, 9)
        except ProcessLookupError:
            pass


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"benchmark: {what} not ready after {timeout}s")


def _tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by the process root and its live descendants."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total


def _postgres_cpu(database_url: str) -> float:
    """CPU seconds used so far by the PostgreSQL backends of the service's pooled connections to the bench database."""
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'cohorts'"
                    " AND pid <> pg_backend_pid()")
        pids = [row[0] for row in cur.fetchall()]
    return sum(_tree_cpu(pid) for pid in pids)


class CpuMeter:
    """CPU ms per item of the web, worker and PostgreSQL parts (and this process, the load generator) over a side."""

    def __init__(self, ctx: BenchContext, web: subprocess.Popen, worker: subprocess.Popen):
        self.ctx, self.pids = ctx, {"web": web.pid, "worker": worker.pid}

    def sample(self) -> dict[str, float]:
        found = {part: _tree_cpu(pid) for part, pid in self.pids.items()}
        found["postgres"] = _postgres_cpu(self.ctx.database_url)
        found["client"] = time.process_time()
        return found

    @staticmethod
    def per_item(before: dict, after: dict, count: int) -> dict[str, float]:
        return {part: (after[part] - before[part]) * 1000 / count for part in before}


def _project(ctx: BenchContext) -> tuple[int, dict]:
    token = "bench-" + uuid.uuid4().hex
    with db.connection(ctx.database_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO projects (name) VALUES ('bench_jobs') ON CONFLICT (name) DO UPDATE SET name = "
                    "EXCLUDED.name RETURNING id")
        project_id = cur.fetchone()[0]
        cur.execute("DELETE FROM cohorts WHERE project_id = %s", (project_id,))
        set_token(conn, "bench_jobs", token)
    return project_id, {"Authorization": f"Bearer {token}"}


def _raw_celery_rate(count: int) -> float:
    """cohorts.ping tasks per second through the same broker and worker (sent from SUBMITTERS threads)."""
    from core.settings import Settings
    from workers.celery_app import create_celery

    celery = create_celery(Settings.from_env(_env_for_client()))
    counter = redis_lib.Redis.from_url(BITMAPS)
    key = "bench:ping:" + uuid.uuid4().hex
    def sender(n: int):
        for _ in range(n, count, SUBMITTERS):
            celery.send_task("cohorts.ping", args=[key])

    started = time.perf_counter()
    senders = [threading.Thread(target=sender, args=(n,)) for n in range(SUBMITTERS)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    _wait(lambda: int(counter.get(key) or 0) >= count, 300, "raw tasks")
    return count / (time.perf_counter() - started)


def _env_for_client() -> dict:
    return {"COHORTS_BROKER_URL": BROKER, "COHORTS_REDIS_URL": BITMAPS, "COHORTS_QUEUE": "bench"}


def _job_rate(ctx: BenchContext, headers: dict, count: int) -> tuple[float, list[float]]:
    """Trivial cohorts (an ids leaf) created over HTTP; rate to all succeed, and submit->succeed latencies."""
    run = uuid.uuid4().hex[:8]
    job_ids: list[int] = []
    lock = threading.Lock()

    errors: list[Exception] = []

    def submitter(offset: int):
        session = requests.Session()
        try:
            for i in range(offset, count, SUBMITTERS):
                response = session.post(f"http://127.0.0.1:{PORT}/api/v1/cohorts", headers=headers, json={
                    "name": f"trivial-{run}-{i}", "definition": {"type": "ids", "keys": [f"u{i}"]}})
                response.raise_for_status()
                with lock:
                    job_ids.append(response.json()["job"]["id"])
        except Exception as exc:  # said at once, instead of waiting for jobs that were never created
            errors.append(exc)

    started = time.perf_counter()
    clients = [threading.Thread(target=submitter, args=(n,)) for n in range(SUBMITTERS)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    if errors:
        raise RuntimeError(f"benchmark: {len(errors)} submitters failed, first: {errors[0]!r}")

    def all_done():
        with db.connection(ctx.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status IN ('succeed', 'failed')", (job_ids,))
            return cur.fetchone()[0] == count

    _wait(all_done, 600, "cohort jobs")
    rate = count / (time.perf_counter() - started)
    with db.connection(ctx.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM finished_at - created_at), status FROM jobs WHERE id = ANY(%s)",
                    (job_ids,))
        rows = cur.fetchall()
    failed = [r for r in rows if r[1] != "succeed"]
    if failed:
        raise RuntimeError(f"benchmark: {len(failed)} trivial jobs failed")
    return rate, sorted(float(r[0]) for r in rows)


def _load(url: str, headers: dict, seconds: float, threads: int = 4) -> tuple[float, list[float]]:
    """Requests per second and latencies from `threads` keep-alive clients hitting url for `seconds`."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client():
        session = requests.Session()
        mine = []
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            response = session.get(url, headers=headers)
            mine.append(time.perf_counter() - t0)
            if response.status_code != 200:
                raise RuntimeError(f"benchmark: {url} answered {response.status_code}")
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(latencies) / (time.perf_counter() - started), sorted(latencies)


def _percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


@section("jobs")
def jobs_section(ctx: BenchContext) -> list[Row]:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    db.migrate(ctx.database_url)
    project_id, headers = _project(ctx)
    env = _env(ctx)
    redis_lib.Redis.from_url(BROKER).flushdb()
    python = sys.executable
    web = _start(env, [python, "-m", "gunicorn", "--bind", f"127.0.0.1:{PORT}", "--workers", "2", "--threads", "4",
                       "wsgi:app"], "bench-web.log", ctx)
    worker = _start(env, [python, "-m", "celery", "-A", "workers.main", "worker", "--pool", "prefork",
                          "--concurrency", "2", "--queues", "bench", "--loglevel", "WARNING", "--without-mingle",
                          "--without-gossip", "--hostname", "bench@%h"], "bench-worker.log", ctx)
    maintenance = start_maintenance_worker(env, "bench-maintenance", ctx)
    count = 100 if ctx.small else 500
    seconds = 3 if ctx.small else 8
    rounds = 1 if ctx.small else 3
    throughput, status_rps, latencies, job_lat, bare_lat = [], [], [], [], []
    cpu_raw, cpu_jobs = [], []
    try:
        _wait(lambda: requests.get(f"http://127.0.0.1:{PORT}/healthz", timeout=5).status_code == 200, 60, "web + worker")
        # Baseline and subject alternate within each round, and the median round ratio is reported:
        # the machine is shared, so a slow moment should hit both sides of a ratio, not one.
        meter = CpuMeter(ctx, web, worker)
        for _ in range(rounds):
            before = meter.sample()
            raw_rate = _raw_celery_rate(count)
            middle = meter.sample()
            job_rate, round_latencies = _job_rate(ctx, headers, count)
            after = meter.sample()
            cpu_raw.append(meter.per_item(before, middle, count))
            cpu_jobs.append(meter.per_item(middle, after, count))
            throughput.append((job_rate, raw_rate))
            latencies += round_latencies
            with db.connection(ctx.database_url) as conn, conn.cursor() as cur:
                cur.execute("SELECT max(id) FROM jobs WHERE project_id = %s", (project_id,))
                job_id = cur.fetchone()[0]
            bare_rps, round_bare = _load(f"http://127.0.0.1:{PORT}/ping", {}, seconds)
            job_rps, round_job = _load(f"http://127.0.0.1:{PORT}/api/v1/jobs/{job_id}", headers, seconds)
            status_rps.append((job_rps, bare_rps))
            bare_lat += round_bare
            job_lat += round_job
    finally:
        _stop(web)
        _stop(worker)
        _stop(maintenance)
    job_rate, raw_rate = _median_pair(throughput)
    job_rps, bare_rps = _median_pair(status_rps)
    latencies.sort()
    job_lat.sort()
    bare_lat.sort()
    per_round = "; rounds (value/baseline): "
    return [
        Row(f"trivial cohort jobs over HTTP ({count} a round, 2 worker processes)", job_rate, "jobs/s",
            baseline=raw_rate, baseline_label="raw Celery tasks/s", target="ratio >= 0.7",
            passed=job_rate / raw_rate >= 0.7,
            note="baseline: cohorts.ping tasks (a Redis INCR each, so completion can be counted) on the same "
                 f"broker and worker; jobs: POST /api/v1/cohorts with an ids leaf from {SUBMITTERS} clients, "
                 "timed until every job is succeed; median round" + per_round + _rounds(throughput)),
        Row("CPU per trivial job (web + worker + PostgreSQL + load generator, median round)", _cpu_total(cpu_jobs), "ms",
            baseline=_cpu_total(cpu_raw), baseline_label="ms per raw Celery task",
            note="jobs " + _cpu_parts(cpu_jobs) + "; raw tasks " + _cpu_parts(cpu_raw)
                 + " (CPU of the process trees and of the pooled PostgreSQL backends, per item)"),
        Row("job latency submit -> succeed, p50", statistics.median(latencies), "s"),
        Row("job latency submit -> succeed, p99", _percentile(latencies, 0.99), "s",
            note="from the job row's created_at to finished_at (server clocks), while a round's jobs queue at once"),
        Row("GET /api/v1/jobs/<id> (4 keep-alive clients, loopback)", job_rps, "req/s", baseline=bare_rps,
            baseline_label="GET /ping req/s", target="ratio >= 0.7", passed=job_rps / bare_rps >= 0.7,
            note="gunicorn 2 workers x 4 threads; the load generator is Python (requests) on the same 2 cores; "
                 f"{seconds} s per side; median round" + per_round + _rounds(status_rps)),
        Row("GET /api/v1/jobs/<id> latency p99", _percentile(job_lat, 0.99) * 1000, "ms",
            baseline=_percentile(bare_lat, 0.99) * 1000, baseline_label="/ping p99 ms"),
    ]


def _cpu_total(rounds: list[dict]) -> float:
    return statistics.median(sum(r.values()) for r in rounds)


def _cpu_parts(rounds: list[dict]) -> str:
    """Median ms per item of each part over the rounds."""
    return ", ".join(f"{part} {statistics.median(r[part] for r in rounds):.2f}" for part in rounds[0])


def _median_pair(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """The (value, baseline) pair of the round with the median ratio."""
    ordered = sorted(pairs, key=lambda pair: pair[0] / pair[1])
    return ordered[len(ordered) // 2]


def _rounds(pairs: list[tuple[float, float]]) -> str:
    return ", ".join(f"{value:.0f}/{baseline:.0f}" for value, baseline in pairs)
