"""Service settings from the environment, shared by the web app, workers and beat (no Flask import)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields, replace

from cohort_engine.config import EngineConfig

log = logging.getLogger(__name__)


def _env_number(env, name, default):
    value = env.get(name)
    return type(default)(value) if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    engine: EngineConfig = field(default_factory=EngineConfig)
    broker_url: str = "redis://127.0.0.1:6379/1"
    queue: str = "cohorts"
    # Dialect packages served (comma-separated, docs/architecture.md); empty: dialects.INSTALLED.
    dialects: str = ""
    # sweep and schedule run here, on a worker of their own, so long compute jobs never delay them.
    maintenance_queue: str = "cohorts.maintenance"
    # Redis bitmaps kept per cohort (newest versions, plus the published one); older rows keep no bitmap.
    keep_versions: int = 5
    soft_time_limit: int = 600
    hard_time_limit: int = 660
    heartbeat_interval: float = 5.0
    stale_after: float = 60.0
    max_attempts: int = 3
    retry_delay: float = 10.0
    sweep_interval: float = 15.0
    schedule_interval: float = 10.0
    requeue_after: float = 900.0
    # A job `new` this long after its send whose message the Redis broker no longer has is resent.
    lost_after: float = 20.0
    backoff_base: float = 60.0
    backoff_max: float = 3600.0
    broker_check: bool = True
    # Sugo /ant and /druid/v2 (docs/dialects/sugo.md): the project served to requests without a token
    # ("" = none: such requests answer 401),
    sugo_project: str = ""
    # the dataSource names of the embedded broker (name=events|users, comma-separated),
    sugo_datasources: str = "schedule_desc=events,tag_bank=users"
    # addresses that are this service's own embedded broker (answered in-process, never over HTTP),
    sugo_embedded_brokers: str = "127.0.0.1:6061,localhost:6061"
    # how long a request waits for its job before answering 202, and hproxy retries per batch.
    sugo_wait_seconds: float = 25.0
    sugo_hproxy_retries: int = 3
    sugo_hproxy_backoff: float = 0.5
    # The dashboard at / (docs/dashboard.md): the project shown to visitors without a token ("" = none:
    # they get the login form).
    dashboard_project: str = ""
    # Largest request body read (docs/api.md); larger ones are answered 413 before they are read.
    max_body_bytes: int = 2 * 1024 * 1024
    # ID imports (docs/imports.md): the largest upload body and row count (above max_body_bytes: the
    # upload endpoints stream their body), the directory routine-import paths are confined to ("" =
    # path sources off), and the connect/read timeout of a URL source.
    import_max_bytes: int = 256 * 1024 * 1024
    import_max_rows: int = 2_000_000
    import_dir: str = ""
    import_fetch_timeout: float = 30.0
    # /metrics: loopback clients only, unless a scraper sends this as a Bearer token (docs/jobs.md).
    metrics_token: str = ""
    # The embedded broker /druid/v2 (docs/druid.md "Limits"): time buckets, result rows and bytes,
    # the query timeout (context.timeout is honoured up to it) and the JSON nesting depth.
    druid_max_buckets: int = 50_000
    druid_max_rows: int = 500_000
    druid_max_response_bytes: int = 32 * 1024 * 1024
    druid_timeout_ms: int = 10_000
    druid_max_depth: int = 64
    # ThinkingData /open answers (docs/dialects/thinkingdata.md "Errors"): 0 answers each error with the
    # HTTP status of its kind; 200 answers every error 200, for clients whose HTTP library throws on 4xx.
    thinkingdata_error_status: int = 0
    # POST /api/v1/cohorts/preview (docs/api.md): how long the request waits for its job before answering 202,
    # the sample size when the body names none, and how long a finished preview job stays readable.
    preview_wait_seconds: float = 3.0
    preview_sample: int = 10
    preview_keep_seconds: float = 3600.0
    # Webhook deliveries (docs/webhooks.md): attempts, backoff base * 2^(n-1) capped at max, request timeout,
    # and how overdue a pending delivery is before the sweeper resends it (its message was lost).
    webhook_max_attempts: int = 6
    webhook_backoff_base: float = 10.0
    webhook_backoff_max: float = 600.0
    webhook_timeout: float = 5.0
    webhook_lost_after: float = 300.0

    @property
    def druid_limits(self):
        """The QueryLimits of the embedded broker's HTTP endpoint."""
        # Imported here: cohort_engine.broker loads DuckDB, which beat and the CLI never need.
        from cohort_engine.broker import QueryLimits

        return QueryLimits(max_buckets=self.druid_max_buckets, max_rows=self.druid_max_rows,
                           max_response_bytes=self.druid_max_response_bytes, timeout_ms=self.druid_timeout_ms,
                           max_depth=self.druid_max_depth)

    @property
    def visibility_timeout(self) -> int:
        # Above the hard limit, or Redis re-delivers a job that is still running.
        return self.hard_time_limit + 600

    @classmethod
    def from_env(cls, environ=None, **overrides) -> Settings:
        env = os.environ if environ is None else environ
        if env.get("COHORTS_SUGO_ALLOWED_HOSTS"):
            # Replaced by per-project targets; saying so beats silently allowing less than before.
            log.warning("setting=COHORTS_SUGO_ALLOWED_HOSTS is no longer read: allow Sugo targets per project with "
                        "`python -m core.manage sugo-allow` (docs/dialects/sugo.md)")
        values = {"engine": EngineConfig.from_env(env),
                  "broker_url": env.get("COHORTS_BROKER_URL", cls.broker_url),
                  "queue": env.get("COHORTS_QUEUE", cls.queue),
                  "maintenance_queue": env.get("COHORTS_MAINTENANCE_QUEUE", cls.maintenance_queue)}
        for f in fields(cls):
            if f.name in values or f.name == "broker_check":
                continue
            values[f.name] = _env_number(env, "COHORTS_" + f.name.upper(), f.default)
        return replace(cls(**values), **overrides)
