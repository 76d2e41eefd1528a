"""Sugo benchmark: /ant/usergroup/multi over 10 groups end to end vs plain Python set algebra; group format speed."""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid

import numpy as np
import redis as redis_lib
import requests

from cohort_engine import db
from core.data import projects, sugo_targets
from dialects.sugo import groups as sugo_groups

from . import BenchContext, Row, section
from .jobs import _start, _stop, _wait, start_maintenance_worker

PORT = 6072
# The bench's Redis (BENCH_SUGO_REDIS=host:port, BENCH_SUGO_REDIS_DB=first of three databases), so
# parallel runs on one machine can keep apart.
REDIS_HOST, _, REDIS_PORT = os.environ.get("BENCH_SUGO_REDIS", "127.0.0.1:6379").partition(":")
REDIS_DB_BASE = int(os.environ.get("BENCH_SUGO_REDIS_DB", "9"))
# The service's own bitmap store: another database, since Sugo requests may never write there.
SERVICE_REDIS = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB_BASE}"
GROUPS_DB = REDIS_DB_BASE + 1
GROUPS = f"redis://{REDIS_HOST}:{REDIS_PORT}/{GROUPS_DB}"
BROKER = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB_BASE + 2}"
PROJECT = "bench_sugo"
GROUP_COUNT = 10
OPS = ["or", "or", "and", "or", "exclude", "or", "or", "and", "or"]
RUNS = 3


def _keys(universe: int) -> list[str]:
    return [f"u{(i * 2654435761) % 4294967296:08x}-{i}" for i in range(universe)]


def _groups(universe_keys: list[str], size: int) -> list[list[str]]:
    rng = np.random.default_rng(7)
    return [[universe_keys[i] for i in rng.choice(len(universe_keys), size, replace=False).tolist()]
            for _ in range(GROUP_COUNT)]


def _project(ctx: BenchContext) -> None:
    with db.connection(ctx.database_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO projects (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (PROJECT,))
        project_id = projects.by_name(conn, PROJECT)["id"]
        sugo_targets.add(conn, project_id, "redis", REDIS_HOST, int(REDIS_PORT), GROUPS_DB)


def _body(names: list[str], output: str) -> list[dict]:
    def config(name):
        return {"hostAndPorts": f"{REDIS_HOST}:{REDIS_PORT}", "db": GROUPS_DB, "clusterMode": False, "groupId": name}

    body = [{"type": "usergroup", "query": {"dataConfig": config(names[0])}}]
    body += [{"type": "usergroup", "op": op, "query": {"dataConfig": config(n)}} for op, n in zip(OPS, names[1:],
                                                                                                    strict=True)]
    return body + [{"type": "finalGroup", "append": False, "query": {"dataConfig": config(output)}}]


def _plain_sets(client, names: list[str], output: str) -> int:
    """The baseline: what Sugo's service does with hash sets, in plain Python on the parsed id strings.

    Read + parse each group, a set of it, |= / &= / -= in order, encode + write the result (pipelined
    RPUSH to a temporary key, RENAME over the output): the service's I/O with nothing around it.
    """
    accumulated = None
    for position, name in enumerate(names):
        current = set(sugo_groups.read_group(client, name))
        if accumulated is None:
            accumulated = current
        else:
            op = OPS[position - 1]
            if op == "or":
                accumulated |= current
            elif op == "and":
                accumulated &= current
            else:
                accumulated -= current
    tmp = f"{output}:tmp"
    pipe = client.pipeline(transaction=False)
    for chunk in sugo_groups.encode(list(accumulated)):
        pipe.rpush(tmp, chunk)
    pipe.rename(tmp, output)
    pipe.execute()
    return len(accumulated)


def _format_rates(keys: list[str]) -> tuple[float, float]:
    started = time.perf_counter()
    chunks = sugo_groups.encode(keys)
    encode_seconds = time.perf_counter() - started
    joined = b"".join(chunks)
    started = time.perf_counter()
    parsed = sugo_groups.parse(joined)
    parse_seconds = time.perf_counter() - started
    if parsed != keys:
        raise RuntimeError("benchmark: parse(encode(keys)) != keys")
    return len(keys) / parse_seconds, len(keys) / encode_seconds


@section("sugo")
def sugo_section(ctx: BenchContext) -> list[Row]:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    db.migrate(ctx.database_url)
    size = 100_000 if ctx.small else 1_000_000
    universe = _keys(3 * size)
    members = _groups(universe, size)
    _project(ctx)
    client = redis_lib.Redis.from_url(GROUPS, socket_timeout=120)
    names = [f"bench-sugo-{i}" for i in range(GROUP_COUNT)]
    for name, keys in zip(names, members, strict=True):
        sugo_groups.write_group(client, name, keys)
    parse_rate, encode_rate = _format_rates(members[0])

    env = {**os.environ, "COHORTS_DATABASE_URL": ctx.database_url, "COHORTS_BROKER_URL": BROKER,
           "COHORTS_REDIS_URL": SERVICE_REDIS, "COHORTS_STORE_DIR": str(ctx.work_dir / "store"),
           "COHORTS_KEY_PREFIX": "cohorts-bench", "COHORTS_QUEUE": "bench-sugo",
           "COHORTS_MAINTENANCE_QUEUE": "bench-sugo.maintenance", "COHORTS_SUGO_PROJECT": PROJECT,
           "COHORTS_SUGO_WAIT_SECONDS": "600", "COHORTS_SOFT_TIME_LIMIT": "900", "COHORTS_HARD_TIME_LIMIT": "960"}
    redis_lib.Redis.from_url(BROKER).flushdb()
    python = sys.executable
    web = _start(env, [python, "-m", "gunicorn", "--bind", f"127.0.0.1:{PORT}", "--workers", "1", "--timeout", "900",
                       "wsgi:app"], "bench-sugo-web.log", ctx)
    worker = _start(env, [python, "-m", "celery", "-A", "workers.main", "worker", "--pool", "prefork",
                          "--concurrency", "1", "--queues", "bench-sugo", "--loglevel", "WARNING", "--without-mingle",
                          "--without-gossip", "--hostname", "bench-sugo@%h"], "bench-sugo-worker.log", ctx)
    maintenance = start_maintenance_worker(env, "bench-sugo-maintenance", ctx)
    end_to_end, plain, counts = [], [], set()
    try:
        _wait(lambda: requests.get(f"http://127.0.0.1:{PORT}/healthz", timeout=5).status_code == 200, 60, "web")
        session = requests.Session()
        url = f"http://127.0.0.1:{PORT}/ant/usergroup/multi"

        def service(output):
            response = session.post(url, json=_body(names, output), timeout=900)
            if response.status_code != 200:
                raise RuntimeError(f"benchmark: multi answered {response.status_code}: {response.text[:300]}")
            return response.json()[0]["event"]["RowCount"]

        def baseline(output):
            return _plain_sets(client, names, output)

        # A warm-up of each first (imports, connections), then the two alternate, each going first in
        # turn; each run's output groups are compared id for id outside the timings.
        for attempt in range(RUNS + 1):
            output = f"bench-sugo-out-{uuid.uuid4().hex[:6]}"
            reference = f"{output}-plain"
            runs = ((service, output, end_to_end), (baseline, reference, plain))
            for run, key, times in runs[::1 if attempt % 2 else -1]:
                started = time.perf_counter()
                counts.add(run(key))
                if attempt:
                    times.append(time.perf_counter() - started)
            written, expected = sugo_groups.read_group(client, output), sugo_groups.read_group(client, reference)
            client.delete(output, reference)
            if len(written) != len(set(written)) or set(written) != set(expected):
                raise RuntimeError("benchmark: the service's group differs from the plain set algebra's")
    finally:
        _stop(web)
        _stop(worker)
        _stop(maintenance)
        client.delete(*names)
    if len(counts) != 1:
        raise RuntimeError(f"benchmark: end to end and plain set runs disagree on the group size: {counts}")
    e2e, baseline = statistics.median(end_to_end), statistics.median(plain)
    label = f"{GROUP_COUNT} groups x {size:,} ids"
    return [
        Row(f"/ant/usergroup/multi over {label} (HTTP, job, worker)", e2e, "s", baseline=baseline,
            baseline_label="plain Python sets of the parsed id strings: read+parse, set ops, encode+write",
            target="ratio <= 1.0", passed=e2e / baseline <= 1.0,
            note=f"median of {RUNS} runs after a warm-up, alternating; output {counts.pop():,} ids, equal id for id "
                 f"on both sides; 9 ops or/and/exclude over a {len(universe):,}-key universe; usergroup sources only, "
                 "so the service combines the raw groups with Arrow, without the dictionary"),
        Row("Sugo group parse", parse_rate, "ids/s", target=">= 2M/s", passed=parse_rate >= 2_000_000,
            note=f"{size:,} ids of about {len(members[0][0])} bytes"),
        Row("Sugo group encode", encode_rate, "ids/s", target=">= 2M/s", passed=encode_rate >= 2_000_000),
    ]
