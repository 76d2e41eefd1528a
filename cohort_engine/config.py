"""Engine settings, read from the environment only when asked (never at import time)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/cohorts"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Of the machine's memory, the share every DuckDB of one worker machine may use together; each
# process gets this share divided by the worker concurrency (docs/store.md "Memory").
DEFAULT_MEMORY_SHARE = 0.75


# Leaf answers are bitmaps of up to ~1.25 MB per 10M-user id range: 64 MiB keeps some fifty of the
# largest, small next to DuckDB's share (docs/store.md "Leaf-result cache").
DEFAULT_LEAF_CACHE_BYTES = 64 * 2**20
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
_SIZE = re.compile(r"(\d+)\s*([A-Za-z]*)")
_MEMORY_SIZE = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)


def machine_memory() -> int:
    """Physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_size(value: str, name: str) -> int:
    """Bytes from "67108864", "64MB" or "64MiB"; ValueError naming the setting otherwise."""
    match = _SIZE.fullmatch(value.strip())
    unit = match.group(2).upper() if match else None
    if unit not in _SIZE_UNITS:
        raise ValueError(f"{name}={value!r}: give a size in bytes, or such as 64MB or 64MiB")
    return int(match.group(1)) * _SIZE_UNITS[unit]


def default_memory_limit(environ) -> str:
    """The DuckDB memory limit of one process: the memory share over the worker concurrency."""
    share = float(environ.get("COHORTS_DUCKDB_MEMORY_SHARE") or DEFAULT_MEMORY_SHARE)
    concurrency = max(1, int(environ.get("WORKER_CONCURRENCY") or 2))
    return f"{int(machine_memory() * share / concurrency) // 2**20}MB"


@dataclass(frozen=True)
class EngineConfig:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    store_dir: str = "var/store"
    key_prefix: str = "cohorts"
    threads: int | None = None
    # DuckDB's memory_limit ("4GB"; None leaves DuckDB's own default, 80% of the machine) and the
    # directory it spills to beyond it (None: no spilling, a query past the limit fails).
    memory_limit: str | None = None
    spill_dir: str | None = None
    # The bound of this process's leaf-result cache (docs/store.md "Leaf-result cache"); 0 disables it.
    leaf_cache_bytes: int = DEFAULT_LEAF_CACHE_BYTES
    # The embedded backend's planner: "auto" answers day-window count leaves from the daily
    # rollups where they are exact, "raw" reads raw events only (docs/store.md).
    planner: str = "auto"

    @classmethod
    def from_env(cls, environ=None) -> EngineConfig:
        env = os.environ if environ is None else environ
        threads = env.get("COHORTS_THREADS")
        memory_limit = env.get("COHORTS_DUCKDB_MEMORY_LIMIT") or default_memory_limit(env)
        if not _MEMORY_SIZE.fullmatch(memory_limit):
            # Checked here, at start-up: DuckDB would refuse it in every job instead.
            raise ValueError(f"COHORTS_DUCKDB_MEMORY_LIMIT={memory_limit!r}: give a size such as 4GB or 512MB")
        planner = env.get("COHORTS_PLANNER") or "auto"
        if planner not in ("auto", "raw"):
            raise ValueError(f"COHORTS_PLANNER={planner!r}: use auto or raw")
        store_dir = env.get("COHORTS_STORE_DIR", "var/store")
        return cls(
            database_url=env.get("COHORTS_DATABASE_URL", DEFAULT_DATABASE_URL),
            redis_url=env.get("COHORTS_REDIS_URL", DEFAULT_REDIS_URL),
            store_dir=store_dir,
            key_prefix=env.get("COHORTS_KEY_PREFIX", "cohorts"),
            threads=int(threads) if threads else None,
            memory_limit=memory_limit,
            spill_dir=env.get("COHORTS_DUCKDB_SPILL_DIR") or os.path.join(store_dir, ".spill"),
            leaf_cache_bytes=parse_size(env.get("COHORTS_LEAF_CACHE_BYTES") or str(DEFAULT_LEAF_CACHE_BYTES),
                                        "COHORTS_LEAF_CACHE_BYTES"),
            planner=planner,
        )

    def duckdb_limits(self) -> DuckDBLimits:
        return DuckDBLimits(self.threads, self.memory_limit, self.spill_dir)


@dataclass(frozen=True)
class DuckDBLimits:
    """What every DuckDB connection of the engine is allowed: threads, memory, a spill directory."""

    threads: int | None = None
    memory_limit: str | None = None
    spill_dir: str | None = None

    def apply(self, con) -> None:
        """Set the limits on a new connection; each process spills into a directory of its own."""
        con.execute("SET TimeZone = 'UTC'")
        if self.threads:
            con.execute(f"SET threads = {int(self.threads)}")
        if self.memory_limit:
            con.execute("SET memory_limit = ?", [self.memory_limit])
        if self.spill_dir:
            # Per process: DuckDB removes its temporary files on close, and two processes sharing
            # one directory could remove each other's.
            own = os.path.join(self.spill_dir, str(os.getpid()))
            os.makedirs(self.spill_dir, exist_ok=True)  # DuckDB makes only the last level
            con.execute("SET temp_directory = ?", [own])
        else:
            con.execute("SET temp_directory = ''")  # not DuckDB's default, ./.tmp under whatever the cwd is
