"""Engine settings: DuckDB's memory limit and spill directory (docs/store.md "Memory"), the leaf cache's bound."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohort_engine.backends.embedded.store import EventStore
from cohort_engine.config import DuckDBLimits, EngineConfig, machine_memory

# A sort of 6M hashes needs ~100 MB: past a 40 MB limit it must spill (or fail without a spill dir).
BIG_SORT = "SELECT count(*), max(h) FROM (SELECT hash(i) AS h FROM range(6000000) t(i) ORDER BY h)"


def test_default_memory_limit_is_the_share_over_the_worker_concurrency():
    config = EngineConfig.from_env({"WORKER_CONCURRENCY": "4", "COHORTS_DUCKDB_MEMORY_SHARE": "0.5",
                                    "COHORTS_STORE_DIR": "/srv/store"})
    assert config.memory_limit == f"{int(machine_memory() * 0.5 / 4) // 2**20}MB"
    assert config.spill_dir == "/srv/store/.spill"
    explicit = EngineConfig.from_env({"COHORTS_DUCKDB_MEMORY_LIMIT": "3GB", "COHORTS_DUCKDB_SPILL_DIR": "/tmp/x"})
    assert (explicit.memory_limit, explicit.spill_dir) == ("3GB", "/tmp/x")


def test_the_leaf_cache_bound_reads_bytes_or_sizes_and_refuses_anything_else():
    assert EngineConfig.from_env({}).leaf_cache_bytes == 64 * 2**20
    assert EngineConfig.from_env({"COHORTS_LEAF_CACHE_BYTES": "0"}).leaf_cache_bytes == 0
    assert EngineConfig.from_env({"COHORTS_LEAF_CACHE_BYTES": "1000"}).leaf_cache_bytes == 1000
    assert EngineConfig.from_env({"COHORTS_LEAF_CACHE_BYTES": "32MiB"}).leaf_cache_bytes == 32 * 2**20
    assert EngineConfig.from_env({"COHORTS_LEAF_CACHE_BYTES": "2 GB"}).leaf_cache_bytes == 2 * 10**9
    for bad in ("lots", "-1", "1.5GB", "64 parsecs"):
        with pytest.raises(ValueError, match="COHORTS_LEAF_CACHE_BYTES"):
            EngineConfig.from_env({"COHORTS_LEAF_CACHE_BYTES": bad})
def test_the_planner_mode_is_read_and_checked_at_start_up():
    assert EngineConfig.from_env({}).planner == "auto"
    assert EngineConfig.from_env({"COHORTS_PLANNER": "raw"}).planner == "raw"
    with pytest.raises(ValueError, match="COHORTS_PLANNER='rollup'"):
        EngineConfig.from_env({"COHORTS_PLANNER": "rollup"})


def test_a_memory_limit_duckdb_would_refuse_is_refused_at_start_up():
    with pytest.raises(ValueError, match="COHORTS_DUCKDB_MEMORY_LIMIT='lots'"):
        EngineConfig.from_env({"COHORTS_DUCKDB_MEMORY_LIMIT": "lots"})


def _store_with_events(tmp_path, limits):
    source = tmp_path / "events.parquet"
    pq.write_table(pa.table({"distinct_id": ["a", "b"], "event": ["pay", "pay"],
                             "time": [datetime(2024, 1, 1, tzinfo=UTC)] * 2}), source)
    store = EventStore(tmp_path / "store", "p", limits)
    keys = {"a": 1, "b": 2}
    store.ingest_events(source, lambda column: np.array([keys[k] for k in column]), ZoneInfo("UTC"))
    return store


def test_store_connections_carry_the_limits_and_spill_past_them(tmp_path):
    limits = DuckDBLimits(threads=1, memory_limit="40MB", spill_dir=str(tmp_path / "spill"))
    con = _store_with_events(tmp_path, limits).snapshot().connect()
    setting = con.execute("SELECT current_setting('memory_limit'), current_setting('temp_directory')").fetchone()
    assert setting[0].endswith("MiB") and float(setting[0].split()[0]) < 41
    assert setting[1] == os.path.join(str(tmp_path / "spill"), str(os.getpid()))
    assert con.execute(BIG_SORT).fetchone()[0] == 6_000_000
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 2


def test_without_a_spill_dir_the_limit_is_a_hard_one(tmp_path):
    con = _store_with_events(tmp_path, DuckDBLimits(threads=1, memory_limit="40MB")).snapshot().connect()
    with pytest.raises(duckdb.OutOfMemoryException):
        con.execute(BIG_SORT).fetchone()
