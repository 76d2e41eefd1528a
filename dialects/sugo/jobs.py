"""Sugo jobs (`usergroup`, `batchUpdate`): user-group set algebra (Roaring, or Arrow on the raw groups), tag writes.

The plain logic lives in SugoRunner; `run_sugo_job` is the handler the Sugo dialect registers for
its job kinds (dialects/sugo/__init__.py), run by the core job runner (claim, heartbeat and cancel,
progress, final status: core/jobs/runner.py).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

import redis as redis_lib
from pyroaring import BitMap
from redis.exceptions import RedisClusterException

from cohort_engine import db
from cohort_engine.bitmaps import to_bitmap
from cohort_engine.broker import DataSources, DruidQueryError, EmbeddedBroker, run
from cohort_engine.druid.client import DruidClient, DruidError
from cohort_engine.project import ProjectEngine
from core.data import sugo_targets
from core.jobs.runner import JobRun, JobStopped
from dialects.sugo import group_algebra
from dialects.sugo import groups as sugo_groups
from dialects.sugo import schemas as dialect
from dialects.sugo.broker_queries import QUERY_TYPES, row_event, user_group_uids
from dialects.sugo.hproxy import HproxyClient
from dialects.sugo.redis_targets import SugoRedisConfigError, connect, normalise

log = logging.getLogger(__name__)

PAGE_ROWS = 50_000
DRUID_CODES = {400: "bad_query", 501: "unsupported", 504: "timeout"}

Step = Callable[[int, int], None]


def druid_failure(exc: Exception, where: str) -> JobStopped:
    """JobStopped with an error code and message for a broker's (or the embedded executor's) error."""
    if isinstance(exc, DruidQueryError):
        return JobStopped(DRUID_CODES.get(exc.status, "backend_error"), f"{exc.error}: {exc.message}")
    if exc.error_code == "Connection failed":
        return JobStopped("backend_unavailable", f"broker {where} unreachable: {exc.message}")
    code = DRUID_CODES.get(exc.status, "timeout" if exc.error_code == "Query timeout" else "backend_error")
    return JobStopped(code, f"broker {where} answered {exc.error_code}: {exc.message}")


class SugoRunner:
    """Runs one Sugo request for a project; `step(done, total)` reports progress (and may stop the job)."""

    def __init__(self, settings, project: str, targets: dialect.Targets, step: Step | None = None):
        self.settings = settings
        self.engine = ProjectEngine(settings.engine, project)
        # The project's targets as they are now: one the operator removed since submit is refused.
        self.targets = targets
        self.datasources = DataSources.for_config(settings.engine, dialect.datasource_mapping(settings, project))
        self.step = step or (lambda done, total: None)
        self.written_rows = 0
        # Remote queries in flight, so a cancel request can reach the broker (DELETE /druid/v2/{queryId}).
        self._active: dict[str, DruidClient] = {}
        self._active_lock = threading.Lock()
        self.cancelled = False

    # -- Redis groups <-> bitmaps over the project's user-key dictionary ---------------------------

    def redis_for(self, config: dict, path: str):
        """A client for a dataConfig the project may use (checked again here, as at submit)."""
        errors = dialect.check_redis(path, config, self.targets)
        if errors:
            raise JobStopped("bad_request", "; ".join(f"{field}: {' '.join(m)}" for field, m in errors.items()))
        try:
            return connect(config, allow=self.targets.redis_allow(normalise(config, path)[-1]), path=path)
        except SugoRedisConfigError as exc:
            raise JobStopped("bad_request", str(exc)) from None

    def bitmap_of(self, keys) -> BitMap:
        return to_bitmap(self.engine.encode(keys)) if len(keys) else BitMap()

    def read_bitmap(self, client, group_id: str) -> BitMap:
        return self.bitmap_of(sugo_groups.read_group(client, group_id))

    def store_bitmap(self, client, group_id: str, bitmap: BitMap, append: bool, on_read=None) -> int:
        """Replace the group with the users of bitmap, OR-ed with its current users if append.

        Under the group's writer lock (sugo_groups.update_group), so concurrent appends all count;
        readers see the old or the new group, whole.
        """
        def ids(current):
            nonlocal bitmap
            if current is not None:
                bitmap = bitmap | self.bitmap_of(current)
            if on_read is not None:
                on_read()
            return list(self.engine.iter_keys(bitmap, batch=65536))

        return sugo_groups.update_group(client, group_id, ids, read=append)

    # -- brokers ------------------------------------------------------------------------------------

    def broker(self, value: str):
        if self.targets.is_embedded(value):
            return EmbeddedBroker(self.datasources, query_types=QUERY_TYPES, row_parser=row_event)
        for host, port in dialect.broker_addresses(value):
            if not self.targets.broker_allowed(host, port):
                raise JobStopped("bad_request", f"broker {host}:{port} is not an allowed host")
        return DruidClient(value, row_parser=row_event)

    def cancel(self) -> None:
        """Ask the brokers of the remote queries in flight to cancel them; the job then ends `cancelled`."""
        self.cancelled = True
        with self._active_lock:
            active = list(self._active.items())
        for query_id, client in active:
            try:
                client.cancel(query_id)
                log.info("druid query cancelled query_id=%s", query_id)
            except DruidError as exc:
                log.warning("druid cancel failed query_id=%s error=%s", query_id, exc)

    def _track(self, client, query_id: str | None) -> None:
        with self._active_lock:
            if query_id is None:
                self._active = {k: v for k, v in self._active.items() if v is not client}
            elif not isinstance(client, EmbeddedBroker):
                self._active[query_id] = client

    def _failure(self, exc: Exception, where: str) -> JobStopped:
        if self.cancelled:
            return JobStopped("cancelled", "the job was cancelled on request; its broker query was cancelled too")
        return druid_failure(exc, where)

    def user_group(self, broker_value: str, query: dict) -> BitMap:
        """The users of a user_group query: in-process from the embedded store, else a paged groupBy."""
        broker = self.broker(broker_value)
        try:
            if isinstance(broker, EmbeddedBroker):
                try:
                    return user_group_uids(query, self.datasources)
                except DruidQueryError as exc:
                    if "key dimension" not in exc.message:
                        raise
                    return self.bitmap_of(run(query, self.datasources, query_types=QUERY_TYPES))
            bitmap = BitMap()
            dimension = query["dimension"]
            query_id = str(uuid.uuid4())
            self._track(broker, query_id)
            for page in broker.iter_group_by(dialect.user_group_as_group_by(query), PAGE_ROWS, query_id):
                keys = [str(e[dimension]) for e in page if e.get(dimension) not in (None, "")]
                bitmap |= self.bitmap_of(keys)
            return bitmap
        except (DruidError, DruidQueryError) as exc:
            raise self._failure(exc, broker_value) from None
        finally:
            self._track(broker, None)
            broker.close()

    # -- the four endpoints -------------------------------------------------------------------------

    def single(self, request: dict) -> dict:
        query = request["query"]
        config = query["dataConfig"]
        total = 3
        bitmap = self.user_group(dialect.broker_of(request)[1], query)
        self.step(1, total)
        client = self.redis_for(config, "query.dataConfig")
        count = self.store_bitmap(client, config["groupId"], bitmap, request["append"],
                                  on_read=lambda: self.step(2, total))
        return {"count": count}

    def multi(self, entries: list[dict]) -> dict:
        """Sources applied left to right (or / and / exclude), written to the finalGroup; temporaries deleted."""
        if not any(e["type"] in dialect.TEMPORARY_TYPES for e in entries):
            return self.multi_on_keys(entries)
        return self.multi_on_bitmaps(entries)

    def multi_on_keys(self, entries: list[dict]) -> dict:
        """multi when every source is a stored group: set algebra on the groups' bytes, no dictionary, no bitmap.

        Nothing here needs a uid (no query result to combine, no bitmap kept), so mapping every id
        to a uid and back would only add work (group_algebra: Arrow over the raw bytes).
        """
        final = next(e for e in entries if e["type"] == dialect.FINAL)
        total = len(entries) + 1
        sources, ops = [], []
        for index, entry in enumerate(entries):
            if entry is final:
                continue
            config = entry["query"]["dataConfig"]
            client = self.redis_for(config, f"[{index}].query.dataConfig")
            sources.append(sugo_groups.read_parsed(client, config["groupId"], group_algebra.ids_of))
            if len(sources) > 1:
                ops.append(entry["op"])
            self.step(len(sources), total)
        result = group_algebra.combine(sources, ops)
        del sources
        count = 0

        def with_current(current) -> list[bytes]:
            nonlocal result, count
            if current is not None:
                result = group_algebra.combine([result, current], ["or"])
            count = len(result)
            return group_algebra.group_bytes(result)

        final_config = final["query"]["dataConfig"]
        client = self.redis_for(final_config, f"[{entries.index(final)}].query.dataConfig")
        sugo_groups.update_group_raw(client, final_config["groupId"], with_current, group_algebra.ids_of,
                                     read=final["append"])
        self.step(total - 1, total)
        return {"count": count}

    def multi_on_bitmaps(self, entries: list[dict]) -> dict:
        """multi with tindex / uindex queries: their uid bitmaps and the groups' ids meet over the dictionary."""
        sources = [e for e in entries if e["type"] != dialect.FINAL]
        final = next(e for e in entries if e["type"] == dialect.FINAL)
        total = len(sources) + 2
        accumulated: BitMap | None = None
        done = 0
        for index, entry in enumerate(entries):
            if entry["type"] == dialect.FINAL:
                continue
            if entry["type"] in dialect.TEMPORARY_TYPES:
                current = self.user_group(dialect.broker_of(entry)[1], entry["query"])
            else:
                config = entry["query"]["dataConfig"]
                current = self.read_bitmap(self.redis_for(config, f"[{index}].query.dataConfig"), config["groupId"])
            if accumulated is None:
                accumulated = current
            elif entry["op"] == "or":
                accumulated |= current
            elif entry["op"] == "and":
                accumulated &= current
            else:
                accumulated -= current
            done += 1
            self.step(done, total)
        final_config = final["query"]["dataConfig"]
        client = self.redis_for(final_config, f"[{entries.index(final)}].query.dataConfig")
        count = self.store_bitmap(client, final_config["groupId"], accumulated, final["append"])
        self.step(len(sources) + 1, total)
        self.delete_temporaries(entries)
        return {"count": count}

    def delete_temporaries(self, entries: list[dict]) -> None:
        """Delete the tindex/uindex groups, as Sugo does, but never the output or a kept usergroup."""
        def where(entry):
            config = entry["query"]["dataConfig"]
            return normalise(config), config["groupId"]

        kept = {where(e) for e in entries if e["type"] not in dialect.TEMPORARY_TYPES}
        for index, entry in enumerate(entries):
            if entry["type"] in dialect.TEMPORARY_TYPES and where(entry) not in kept:
                config = entry["query"]["dataConfig"]
                self.redis_for(config, f"[{index}].query.dataConfig").delete(config["groupId"])

    def hproxy(self, request: dict) -> HproxyClient:
        value = dialect.hproxy_of(request)[1]
        for host, port in dialect.hproxy_addresses(value):
            if not self.targets.hproxy_allowed(host, port):
                raise JobStopped("bad_request", f"hproxy {host}:{port} is not an allowed host")
        return HproxyClient(value, request["dataSource"], retries=self.settings.sugo_hproxy_retries,
                            backoff_seconds=self.settings.sugo_hproxy_backoff)

    def tag_user_group(self, request: dict) -> dict:
        """Write dimData to every user of the group, 1000 rows an hproxy request."""
        config = request["userGroupConfig"]
        ids = sugo_groups.read_group(self.redis_for(config, "userGroupConfig"), config["groupId"])
        batches = max(1, -(-len(ids) // 1000))
        self.step(1, batches + 1)
        with self.hproxy(request) as client:
            answer = client.update(self._counted(dialect.group_rows(ids, request)), request["primaryColumn"],
                                   on_batch=lambda done: self.step(done + 1, batches + 1))
        return {**answer, "rows": len(ids)}

    def tag_query(self, request: dict) -> dict:
        """Run the query (paged), map its columns through dimMap and write them with hproxy."""
        query = dict(request["query"])
        broker_value = dialect.broker_of(request)[1]
        broker = self.broker(broker_value)
        skipped = [0]
        limit = (query.get("limitSpec") or {}).get("limit") if "groupBy" in query["queryType"] else query.get("limit")
        expected_batches = max(1, -(-limit // 1000)) if isinstance(limit, int) and limit > 0 else None
        sent = [0]

        def on_batch(done: int) -> None:
            sent[0] = done
            total = expected_batches + 1 if expected_batches else done + 2
            self.step(min(done, total - 1), total)

        query_id = str(uuid.uuid4())
        self._track(broker, query_id)

        def events():
            if "groupBy" in query["queryType"]:
                pages = broker.iter_group_by(query, PAGE_ROWS, query_id)
            else:
                pages = broker.iter_scan(dict(query, resultFormat="list"), PAGE_ROWS, query_id)
            for page in pages:
                yield from page

        try:
            with self.hproxy(request) as client:
                answer = client.update(self._counted(dialect.event_rows(events(), request, skipped)),
                                       request["primaryColumn"], on_batch=on_batch)
        except (DruidError, DruidQueryError) as exc:
            failure = self._failure(exc, broker_value)
            if self.written_rows:
                failure.message += (f"; {self.written_rows} rows in {sent[0]} batches had already been sent to "
                                    "hproxy before the failure")
            raise failure from None
        finally:
            self._track(broker, None)
            broker.close()
        if skipped[0]:
            answer["failed"] += skipped[0]
            answer["errors"].append(f"{skipped[0]} result rows had no {request['primaryColumn']} and were not sent")
        return {**answer, "rows": self.written_rows + skipped[0]}

    def _counted(self, rows):
        for row in rows:
            self.written_rows += 1
            yield row

    def run(self, endpoint: str, request) -> dict:
        handlers = {"single": self.single, "multi": self.multi, "tag_user_group": self.tag_user_group,
                    "tag_query": self.tag_query}
        try:
            return handlers[endpoint](request)
        except sugo_groups.SugoGroupFormatError as exc:
            raise JobStopped("bad_group", str(exc)) from None
        except SugoRedisConfigError as exc:
            # An address a Redis Cluster or Sentinel reported that the project may not use.
            raise JobStopped("bad_request", str(exc)) from None
        except sugo_groups.GroupLockError as exc:
            raise JobStopped("timeout", str(exc)) from None
        except RedisClusterException as exc:
            # Not a RedisError: e.g. clusterMode against a standalone server that answered at first.
            raise JobStopped("bad_request", f"Sugo group Redis Cluster: {exc}") from None
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            raise JobStopped("backend_unavailable", f"Sugo group Redis unreachable: {exc}") from None
        except redis_lib.ResponseError as exc:
            if "unknown command 'SENTINEL'" in str(exc):
                # The request's own mistake, not the backend's: a plain server named as a Sentinel.
                raise JobStopped("bad_request", "sentinelMode is true but hostAndPorts are not Redis Sentinels: "
                                 f"{exc}") from None
            raise JobStopped("backend_error", f"Sugo group Redis refused: {exc}") from None
        except redis_lib.RedisError as exc:
            raise JobStopped("backend_error", f"Sugo group Redis refused: {exc}") from None


def run_sugo_job(job_run: JobRun, job: dict) -> dict:
    """A Sugo job (`usergroup`, `batchUpdate`): its request run by SugoRunner; a cancel reaches its broker queries."""
    last = [-1]

    def step(done: int, total: int) -> None:
        percent = min(99, done * 99 // max(total, 1))
        if percent > last[0]:
            last[0] = percent
            job_run.progress(done, total)

    params = job["params"]
    with db.connection(job_run.dsn) as conn:
        targets = dialect.targets_for(job_run.settings, sugo_targets.for_project(conn, job_run.project["id"]))
    runner = SugoRunner(job_run.settings, job_run.project["name"], targets, step)
    job_run.on_cancel(runner.cancel)
    result = runner.run(params["endpoint"], params["request"])
    return job_run.finish(job, None, result)
