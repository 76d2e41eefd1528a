"""Version retention: each cohort keeps COHORTS_KEEP_VERSIONS version bitmaps in Redis (docs/jobs.md)."""

from __future__ import annotations

import logging

import redis as redis_lib

from core.data import versions

log = logging.getLogger(__name__)


def expire_old_versions(conn, settings, cohort_id: int) -> list[str]:
    """In the publisher's transaction (under the cohort lock): unlink older versions' bitmaps; return their keys."""
    return versions.expire_beyond(conn, cohort_id, settings.keep_versions)


def drop_bitmaps(redis, cohort_id: int, keys: list[str]) -> None:
    """Delete expired bitmaps after the commit; a failure only leaks them, so the published job still succeeds."""
    if not keys:
        return
    try:
        redis.delete(*keys)
    except redis_lib.RedisError as exc:
        log.warning("cohort=%s expired bitmaps not deleted keys=%s error=%r", cohort_id, keys, str(exc))
        return
    log.info("cohort=%s expired_versions=%s", cohort_id, len(keys))
