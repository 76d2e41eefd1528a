"""Engine settings, read from the environment only when asked (never at import time)."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/cohorts"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class EngineConfig:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    store_dir: str = "var/store"
    key_prefix: str = "cohorts"
    threads: int | None = None

    @classmethod
    def from_env(cls, environ=None) -> EngineConfig:
        env = os.environ if environ is None else environ
        threads = env.get("COHORTS_THREADS")
        return cls(
            database_url=env.get("COHORTS_DATABASE_URL", DEFAULT_DATABASE_URL),
            redis_url=env.get("COHORTS_REDIS_URL", DEFAULT_REDIS_URL),
            store_dir=env.get("COHORTS_STORE_DIR", "var/store"),
            key_prefix=env.get("COHORTS_KEY_PREFIX", "cohorts"),
            threads=int(threads) if threads else None,
        )
