"""Fixtures for job-system tests: beat, a project with a mid-size sample, slow definitions."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.services import create_sample_project, start_beat, stop, wait_until

SLOW_LEAVES = 30


@pytest.fixture(scope="module")
def beat(service_env, maintenance_worker, tmp_path_factory):
    """A real beat process: sends the sweeper/reaper every second and the cron scheduler twice a second.

    They run on the maintenance worker (their own queue), not on the compute worker.
    """
    folder = tmp_path_factory.mktemp("beat")
    process = start_beat(service_env, folder / "schedule", folder / "beat.log")
    yield process
    stop(process)


@pytest.fixture(scope="module")
def sample_project(database_url, service_settings, tmp_path_factory):
    """A project with 3,000 users and 300,000 events; returns (name, id, headers, sample files)."""
    name, project_id, token, written = create_sample_project(
        database_url, service_settings.engine, tmp_path_factory.mktemp("sample"), 3000, 300_000, seed=11, prefix="s")
    return name, project_id, {"Authorization": f"Bearer {token}"}, written


def slow_definition(leaves: int = SLOW_LEAVES) -> dict:
    """An `or` of many distinct-day leaves over all events: a few seconds of real work, leaf by leaf.

    Each leaf carries a row filter every event passes (no item has that name, and `ne` keeps rows
    without one), so the planner reads raw events: the daily rollups would answer these leaves in
    milliseconds, and the tests using them need a job that takes time. The name is new on every
    call, so no worker's leaf cache holds an answer from an earlier job either.
    """
    unseen = f"no such item {uuid.uuid4().hex}"
    return {"op": "or", "children": [
        {"type": "event", "event": "*", "agg": {"fn": "days"}, "window": {"last": 20 + i},
         "filter": {"property": "item_name", "cmp": "ne", "values": [unseen]},
         "cmp": "gt", "values": [8 + i % 7]} for i in range(leaves)]}


def reference_members(written: dict, base_time: datetime, leaves: int = SLOW_LEAVES) -> set[str]:
    """Brute force over the sample files with numpy (not the engine): members of slow_definition (UTC project)."""
    tables = [pq.read_table(p, columns=["distinct_id", "time"]) for p in written["events"]]
    keys = np.concatenate([t.column("distinct_id").to_numpy(zero_copy_only=False) for t in tables]).astype(str)
    days = np.concatenate([t.column("time").cast("int64").to_numpy() for t in tables]) // 86_400_000_000
    names, user_of_row = np.unique(keys, return_inverse=True)
    today = (base_time.astimezone(timezone.utc).date() - date(1970, 1, 1)).days
    members: set[str] = set()
    for i in range(leaves):
        inside = (days > today - (20 + i)) & (days <= today)
        user_days = np.unique(np.stack([user_of_row[inside], days[inside]]), axis=1)
        users, active_days = np.unique(user_days[0], return_counts=True)
        members |= set(names[users[active_days > 8 + i % 7]].tolist())
    return members


def wait_for_job(client, headers, job_id, predicate, timeout=60.0, what="job state"):
    def check():
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).get_json()
        return job if predicate(job) else None
    return wait_until(check, timeout=timeout, interval=0.05, what=what)


def ended(job) -> bool:
    return job["status"] in ("succeed", "failed")
