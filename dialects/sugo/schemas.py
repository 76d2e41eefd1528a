"""Sugo `/ant` API (user groups, tag batch updates): request schemas and their translation.

Seeds 000 and 001; semantics and every choice made here: docs/dialects/sugo.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from cohort_engine.broker import DataSourceSpec
from cohort_engine.druid.client import broker_endpoints
from core.addresses import same_host
from dialects.sugo.hproxy import cell, hproxy_endpoints, is_multi_value
from dialects.sugo.redis_targets import SugoRedisConfigError, format_address, normalise, parse_hosts

SOURCE_TYPES = ("tindex", "uindex", "usergroup")
TEMPORARY_TYPES = ("tindex", "uindex")
FINAL = "finalGroup"
OPS = ("or", "and", "exclude")
USER_GROUP_TYPES = ("user_group", "lucene_user_group")
TAG_QUERY_TYPES = ("groupBy", "lucene_groupBy", "scan", "lucene_scan")
DEFAULT_PRIMARY_COLUMN = "distinct_id"
DEFAULT_REDIS_PORT = 6379
DEFAULT_BROKER_PORT = 8082
# Error code of a failed job -> the HTTP status of the answer (anything else: 500).
FAILURE_STATUS = {"bad_query": 400, "bad_group": 400, "bad_request": 400, "unsupported": 501, "timeout": 504,
                  "backend_unavailable": 503, "backend_error": 502, "cancelled": 409, "superseded": 409}
ENDPOINT_KINDS = {"single": "usergroup", "multi": "usergroup", "tag_user_group": "batchUpdate",
                  "tag_query": "batchUpdate"}


def _one_of(choices) -> validate.OneOf:
    return validate.OneOf(choices, error="must be one of: " + ", ".join(choices))


class StrictBoolean(fields.Boolean):
    """JSON true / false, or the "true" / "false" strings Sugo's lenient Java mapper reads; never "yes", 1 or "on"."""

    default_error_messages = {"invalid": 'must be true or false (or the strings "true" / "false")'}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise self.make_error("invalid")


class Count(fields.Integer):
    """A non-negative JSON integer (not a bool, not a numeric string): a limit, offset or timeout."""

    default_error_messages = {"invalid": "must be a non-negative integer"}

    def __init__(self, **kwargs):
        super().__init__(strict=True, validate=validate.Range(min=0, error="must be a non-negative integer"),
                         **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class _NameOrSpec(fields.Field):
    """A non-empty string, or an object whose `key` is a non-empty string (other keys pass as sent)."""

    def __init__(self, key: str, optional_text: tuple[str, ...] = (), **kwargs):
        super().__init__(**kwargs)
        self.key, self.optional_text = key, optional_text

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict):
            if not isinstance(value.get(self.key), str) or not value[self.key]:
                raise ValidationError(f"{self.key} must be a non-empty string")
            for name in self.optional_text:
                if value.get(name) is not None and not isinstance(value[name], str):
                    raise ValidationError(f"{name} must be a string")
            return value
        raise ValidationError(f"must be a non-empty string or an object with a {self.key}")


class ContextSchema(Schema):
    """A query's `context`; the paging and cancel code reads timeout and queryId, the rest goes to the broker."""

    error_messages = {"type": "must be a JSON object"}

    class Meta:
        unknown = INCLUDE

    timeout = Count()
    queryId = fields.String(validate=validate.Length(min=1))


class LimitSpecSchema(Schema):
    """A groupBy `limitSpec` as the paging code reads it (limit and offset bound the whole result)."""

    error_messages = {"type": "must be a JSON object"}

    class Meta:
        unknown = INCLUDE

    type = fields.String(validate=_one_of(("default",)))
    limit = Count()
    offset = Count()
    columns = fields.List(_NameOrSpec("dimension", ("direction", "dimensionOrder")))


class TagQueryQuerySchema(Schema):
    """The `query` of a tag query batch update: what the paging code needs; the rest goes to the broker."""

    error_messages = {"type": "must be a JSON object"}

    class Meta:
        unknown = INCLUDE

    queryType = fields.String(required=True, validate=_one_of(TAG_QUERY_TYPES))
    context = fields.Nested(ContextSchema)
    limit = Count()
    offset = Count()
    limitSpec = fields.Nested(LimitSpecSchema)
    dimensions = fields.List(_NameOrSpec("dimension", ("outputName",)))


class DataConfigSchema(Schema):
    """A Redis location and group id (`dataConfig` / `userGroupConfig`); other keys pass to the client."""

    error_messages = {"type": "must be a JSON object"}

    class Meta:
        unknown = INCLUDE

    hostAndPorts = fields.String(required=True, validate=validate.Length(min=1))
    clusterMode = StrictBoolean(load_default=False)
    sentinelMode = StrictBoolean(load_default=False)
    groupId = fields.String(required=True, validate=validate.Length(min=1))


class UserGroupQuerySchema(Schema):
    """Sugo's `user_group` query; filter, intervals, granularity and context go to the broker as sent."""

    error_messages = {"type": "must be a JSON object"}

    class Meta:
        unknown = INCLUDE

    queryType = fields.String(required=True, validate=_one_of(USER_GROUP_TYPES))
    dataSource = fields.String(required=True, validate=validate.Length(min=1))
    dimension = fields.String(required=True, validate=validate.Length(min=1))
    dataConfig = fields.Nested(DataConfigSchema, required=True)
    context = fields.Nested(ContextSchema)


class GroupRefSchema(Schema):
    """The query of a `usergroup` or `finalGroup` entry: only where the group lives."""

    error_messages = {"type": "must be a JSON object"}

    class Meta:
        unknown = INCLUDE

    dataConfig = fields.Nested(DataConfigSchema, required=True)


def _exactly_one(data: dict, names: tuple[str, str], required: bool = True) -> None:
    given = [n for n in names if data.get(n) is not None]
    if len(given) > 1:
        raise ValidationError({names[1]: [f"give either {names[0]} or {names[1]}, not both"]})
    if required and not given:
        raise ValidationError({names[0]: [f"missing: give {names[0]} (a URL) or {names[1]} (host:port list)"]})


class SingleSchema(Schema):
    brokerUrl = fields.String(validate=validate.Length(min=1))
    broker = fields.String(validate=validate.Length(min=1))
    query = fields.Nested(UserGroupQuerySchema, required=True)
    append = StrictBoolean(load_default=False)

    @validates_schema
    def _broker(self, data, **kwargs):
        _exactly_one(data, ("brokerUrl", "broker"))


class MultiEntrySchema(Schema):
    type = fields.String(required=True, validate=_one_of(SOURCE_TYPES + (FINAL,)))
    brokerUrl = fields.String(validate=validate.Length(min=1))
    broker = fields.String(validate=validate.Length(min=1))
    query = fields.Dict(required=True)
    op = fields.String(validate=_one_of(OPS))
    append = StrictBoolean(load_default=False)

    @validates_schema
    def _by_type(self, data, **kwargs):
        kind = data.get("type")
        if kind in TEMPORARY_TYPES:
            _exactly_one(data, ("brokerUrl", "broker"))
            schema = UserGroupQuerySchema()
        else:
            _exactly_one(data, ("brokerUrl", "broker"), required=False)
            schema = GroupRefSchema()
        errors = schema.validate(data.get("query") or {})
        if errors:
            raise ValidationError({"query": errors})


class TagUserGroupSchema(Schema):
    hproxyUrl = fields.String(validate=validate.Length(min=1))
    hproxy = fields.String(validate=validate.Length(min=1))
    dataSource = fields.String(required=True, validate=validate.Length(min=1))
    primaryColumn = fields.String(required=True, validate=validate.Length(min=1))
    userGroupConfig = fields.Nested(DataConfigSchema, required=True)
    dimData = fields.Dict(keys=fields.String(validate=validate.Length(min=1)), values=fields.Raw(allow_none=True),
                          required=True, validate=validate.Length(min=1, error="must name at least one column"))
    appendFlags = fields.Dict(keys=fields.String(), values=StrictBoolean(), load_default=dict)

    @validates_schema
    def _columns(self, data, **kwargs):
        _exactly_one(data, ("hproxyUrl", "hproxy"))
        errors = _append_flag_errors(data.get("appendFlags") or {})
        primary = data.get("primaryColumn")
        for column, value in (data.get("dimData") or {}).items():
            if column == primary:
                errors[f"dimData.{column}"] = ["is the primary column; it takes each user's id"]
            elif isinstance(value, (list, tuple)) and not is_multi_value(column):
                errors[f"dimData.{column}"] = ["a list is only allowed for a multi-value column (m?_ prefix)"]
            elif isinstance(value, dict):
                errors[f"dimData.{column}"] = ["must be a value or, for a multi-value column, a list"]
        if errors:
            raise ValidationError(errors)


class TagQuerySchema(Schema):
    brokerUrl = fields.String(validate=validate.Length(min=1))
    broker = fields.String(validate=validate.Length(min=1))
    hproxyUrl = fields.String(validate=validate.Length(min=1))
    hproxy = fields.String(validate=validate.Length(min=1))
    dataSource = fields.String(required=True, validate=validate.Length(min=1))
    primaryColumn = fields.String(load_default=DEFAULT_PRIMARY_COLUMN, validate=validate.Length(min=1))
    dimMap = fields.Dict(keys=fields.String(validate=validate.Length(min=1)),
                         values=fields.String(validate=validate.Length(min=1)), required=True,
                         validate=validate.Length(min=1, error="must map at least one result column"))
    appendFlags = fields.Dict(keys=fields.String(), values=StrictBoolean(), load_default=dict)
    query = fields.Nested(TagQueryQuerySchema, required=True)

    @validates_schema
    def _columns(self, data, **kwargs):
        _exactly_one(data, ("brokerUrl", "broker"))
        _exactly_one(data, ("hproxyUrl", "hproxy"))
        errors = _append_flag_errors(data.get("appendFlags") or {})
        dim_map = data.get("dimMap") or {}
        primary = data.get("primaryColumn") or DEFAULT_PRIMARY_COLUMN
        if dim_map and primary not in dim_map.values():
            errors["dimMap"] = [f"must map a result column to the primary column {primary!r}"]
        targets = list(dim_map.values())
        for column in {t for t in targets if targets.count(t) > 1}:
            errors["dimMap"] = [f"two result columns map to {column!r}"]
        if errors:
            raise ValidationError(errors)


def _append_flag_errors(flags: Mapping[str, bool]) -> dict[str, list[str]]:
    return {f"appendFlags.{column}": ["may be true only for a multi-value column (mi_ ml_ mf_ mp_ md_ ms_)"]
            for column, flag in flags.items() if flag and not is_multi_value(column)}


def _body(body, kind: type) -> object:
    if not isinstance(body, kind):
        what = "an array of group entries" if kind is list else "a JSON object"
        raise ValidationError({"_body": [f"the request body must be {what}"]})
    return body


def load_single(body) -> dict:
    return SingleSchema().load(_body(body, dict))


def load_multi(body) -> list[dict]:
    """Entries of a multi request, validated together: exactly one finalGroup, ops where needed."""
    entries = _body(body, list)
    errors: dict = {}
    loaded = []
    for index, entry in enumerate(entries):
        try:
            loaded.append(MultiEntrySchema().load(entry if isinstance(entry, dict) else {"_": entry}))
        except ValidationError as exc:
            errors[index] = exc.messages if isinstance(entry, dict) else ["must be a JSON object"]
            loaded.append(None)
    if errors:
        raise ValidationError(errors)
    finals = [i for i, e in enumerate(loaded) if e["type"] == FINAL]
    sources = [i for i, e in enumerate(loaded) if e["type"] != FINAL]
    if len(finals) != 1:
        raise ValidationError({"_body": [f"exactly one entry must have type finalGroup (found {len(finals)})"]})
    if not sources:
        raise ValidationError({"_body": ["at least one tindex, uindex or usergroup entry is needed"]})
    for index in sources[1:]:
        if not loaded[index].get("op"):
            errors[index] = {"op": ["missing: or, and or exclude (only the first group may leave it out)"]}
    if errors:
        raise ValidationError(errors)
    for entry in loaded:
        entry["query"] = (UserGroupQuerySchema() if entry["type"] in TEMPORARY_TYPES else GroupRefSchema()).load(
            entry["query"])
    return loaded


def load_tag_user_group(body) -> dict:
    return TagUserGroupSchema().load(_body(body, dict))


def load_tag_query(body) -> dict:
    return TagQuerySchema().load(_body(body, dict))


def broker_of(data: dict) -> tuple[str, str]:
    """(field name, value) of the broker a request or entry names."""
    return ("brokerUrl", data["brokerUrl"]) if data.get("brokerUrl") else ("broker", data["broker"])


def hproxy_of(data: dict) -> tuple[str, str]:
    return ("hproxyUrl", data["hproxyUrl"]) if data.get("hproxyUrl") else ("hproxy", data["hproxy"])


# -- which hosts a request may contact ------------------------------------------------------------


def _url_address(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r} has a bad port") from None
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    return parts.hostname.lower(), port or {"http": 80, "https": 443}.get(parts.scheme, default_port)


def broker_addresses(value: str) -> list[tuple[str, int]]:
    """(host, port) of every broker of a brokerUrl / broker value."""
    return [_url_address(u, DEFAULT_BROKER_PORT) for u in broker_endpoints(value)]


def hproxy_addresses(value: str) -> list[tuple[str, int]]:
    return [_url_address(u, 80) for u in hproxy_endpoints(value, "_")]


def parse_address_list(text: str, default_port: int | None) -> set[tuple[str, int | None]]:
    """{(host, port)} of "host[:port],..." settings text; a missing port means default_port."""
    found: set[tuple[str, int | None]] = set()
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        host, port = _url_address("//" + item if "://" not in item else item, 0)
        found.add((host, port or default_port))
    return found


def parse_target(kind: str, text: str) -> tuple[str, int, int]:
    """(host, port, db) of an operator's target: redis "host:port[/db]", hproxy or broker "host:port"."""
    address, slash, db_text = text.strip().partition("/")
    if slash and kind != "redis":
        raise ValueError(f"{text!r}: only a Redis target has a /db")
    if slash and (not db_text.isascii() or not db_text.isdigit()):
        raise ValueError(f"{text!r}: db {db_text!r} is not a non-negative integer")
    hosts = parse_hosts(address)
    if len(hosts) != 1:
        raise ValueError(f"{text!r}: name one host:port per target")
    (host, port), = hosts
    return host, port, int(db_text) if slash else 0


# Loopback aliases are one host (core/addresses.py, shared with the webhook allowlist).
_same_host = same_host


def _redis_url_target(url: str) -> tuple[str, int, int] | None:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return None
    db_text = parts.path.strip("/") or "0"
    host = (parts.hostname or "127.0.0.1").lower()
    try:
        host = ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    return host, parts.port or DEFAULT_REDIS_PORT, int(db_text) if db_text.isdigit() else 0


def own_redis_targets(settings) -> frozenset[tuple[str, int, int]]:
    """(host, port, db) of every Redis database the service keeps: every redis:// *_url of its settings."""
    found = set()
    for holder in (settings, settings.engine):
        for name, value in vars(holder).items():
            if name.endswith("_url") and isinstance(value, str):
                target = _redis_url_target(value)
                if target is not None:
                    found.add(target)
    return frozenset(found)


@dataclass(frozen=True)
class RedisAllow:
    """allow(host, port) for the Redis addresses of one config at database db (hashable: a client cache key)."""

    targets: frozenset
    own: frozenset
    db: int

    def __call__(self, host: str, port: int) -> bool:
        host = host.lower()
        return (host, port, self.db) in self.targets and not is_own(self.own, host, port, self.db)


def is_own(own: frozenset, host: str, port: int, db: int) -> bool:
    return any(_same_host(host, h) and port == p and db == d for h, p, d in own)


@dataclass(frozen=True)
class Targets:
    """What one project's request bodies may make us contact: its configured targets, plus our embedded broker."""

    redis: frozenset  # (host, port, db)
    hproxy: frozenset  # (host, port)
    broker: frozenset  # (host, port)
    embedded: frozenset  # (host, port): this service's own /druid/v2, answered in-process
    own: frozenset  # (host, port, db) of the service's own Redis databases: never a target

    def redis_allow(self, db: int) -> RedisAllow:
        return RedisAllow(self.redis, self.own, db)

    def broker_allowed(self, host: str, port: int) -> bool:
        return (host.lower(), port) in self.broker or (host.lower(), port) in self.embedded

    def hproxy_allowed(self, host: str, port: int) -> bool:
        return (host.lower(), port) in self.hproxy

    def is_embedded(self, broker: str) -> bool:
        """Whether every host of a broker value is this service's own embedded broker."""
        return all(address in self.embedded for address in broker_addresses(broker))


def targets_for(settings, rows: Iterable[Mapping]) -> Targets:
    """A project's Targets from its sugo_targets rows (core/data/sugo_targets.py) and the settings."""
    by_kind: dict[str, set] = {"redis": set(), "hproxy": set(), "broker": set()}
    for row in rows:
        if row["kind"] not in by_kind:
            continue  # the project's webhook targets (core/webhooks.py) share the table
        address = (row["host"], row["port"], row["db"]) if row["kind"] == "redis" else (row["host"], row["port"])
        by_kind[row["kind"]].add(address)
    embedded = frozenset((h, p) for h, p in parse_address_list(settings.sugo_embedded_brokers, 80))
    return Targets(frozenset(by_kind["redis"]), frozenset(by_kind["hproxy"]), frozenset(by_kind["broker"]),
                   embedded, own_redis_targets(settings))


NOT_ALLOWED = "is not a {what} target allowed for this project (python -m core.manage sugo-allow); nothing was contacted"


def _check_addresses(path: str, addresses: Iterable[tuple[str, int]], allowed, what: str, errors: dict) -> None:
    for host, port in addresses:
        if not allowed(host, port):
            errors.setdefault(path, []).append(f"{host}:{port} " + NOT_ALLOWED.format(what=what))


def _check_value(path: str, value: str, parse, allowed, what: str, errors: dict) -> None:
    try:
        addresses = parse(value)
    except ValueError as exc:
        errors.setdefault(path, []).append(str(exc))
        return
    _check_addresses(path, addresses, allowed, what, errors)


def check_redis(path: str, config: dict, targets: Targets) -> dict[str, list[str]]:
    """Errors of one dataConfig: bad fields, one of the service's own databases, or a target not allowed."""
    try:
        mode, hosts, *_, db = normalise(config, path)
    except SugoRedisConfigError as exc:
        return {exc.field: [str(exc).split(": ", 1)[-1]]}
    errors: dict[str, list[str]] = {}
    hosts_field = f"{path}.hostAndPorts"
    for host, port in hosts:
        if is_own(targets.own, host, port, db):
            field = f"{path}.db" if config.get("db") is not None else hosts_field
            errors.setdefault(field, []).append(
                f"{format_address(host, port)} db {db} is one of this service's own Redis databases (bitmaps, "
                "job broker); it is never a Sugo target; nothing was contacted")
        elif not targets.redis_allow(db)(host, port):
            errors.setdefault(hosts_field, []).append(
                f"{format_address(host, port)} db {db} " + NOT_ALLOWED.format(what="Redis"))
    return errors


def check_hosts(endpoint: str, data, targets: Targets) -> None:
    """ValidationError naming every field of a loaded request whose addresses the project may not use."""
    errors: dict[str, list[str]] = {}
    if endpoint == "multi":
        for index, entry in enumerate(data):
            if entry["type"] in TEMPORARY_TYPES:
                name, value = broker_of(entry)
                _check_value(f"[{index}].{name}", value, broker_addresses, targets.broker_allowed, "broker", errors)
            errors.update(check_redis(f"[{index}].query.dataConfig", entry["query"]["dataConfig"], targets))
    else:
        if data.get("brokerUrl") or data.get("broker"):
            name, value = broker_of(data)
            _check_value(name, value, broker_addresses, targets.broker_allowed, "broker", errors)
        if data.get("hproxyUrl") or data.get("hproxy"):
            name, value = hproxy_of(data)
            _check_value(name, value, hproxy_addresses, targets.hproxy_allowed, "hproxy", errors)
        if endpoint == "single":
            errors.update(check_redis("query.dataConfig", data["query"]["dataConfig"], targets))
        elif endpoint == "tag_user_group":
            errors.update(check_redis("userGroupConfig", data["userGroupConfig"], targets))
    if errors:
        raise ValidationError(errors)


# -- translation ----------------------------------------------------------------------------------


def user_group_as_group_by(query: dict) -> dict:
    """A standard Druid groupBy for the distinct values of a user_group query's dimension."""
    group_by = {key: value for key, value in query.items() if key not in ("queryType", "dimension", "dataConfig")}
    group_by["queryType"] = "groupBy"
    group_by.setdefault("granularity", "all")
    group_by["dimensions"] = [{"type": "default", "dimension": query["dimension"], "outputName": query["dimension"]}]
    group_by["aggregations"] = []
    return group_by


def written_flags(columns: Iterable[str], flags: Mapping[str, bool]) -> dict[str, bool]:
    """appendFlags of the columns a row writes (flags for columns it does not write are dropped)."""
    return {column: bool(flags[column]) for column in columns if column in flags}


def group_rows(ids: Iterable[str], data: dict) -> Iterator[dict]:
    """hproxy rows writing dimData to every id of a group."""
    primary = data["primaryColumn"]
    values = {column: cell(column, value) for column, value in data["dimData"].items()}
    flags = written_flags(values, data["appendFlags"])
    for key in ids:
        yield {"values": {**values, primary: key}, "appendFlags": flags}


def event_rows(events: Iterable[dict], data: dict, skipped: list[int]) -> Iterator[dict]:
    """hproxy rows from query result events through dimMap; events without a primary key are counted in skipped."""
    dim_map = data["dimMap"]
    primary = data["primaryColumn"]
    flags = written_flags(dim_map.values(), data["appendFlags"])
    for event in events:
        values = {column: cell(column, event.get(source)) for source, column in dim_map.items()}
        if values.get(primary) in (None, ""):
            skipped[0] += 1
            continue
        yield {"values": values, "appendFlags": flags}


def datasource_mapping(settings, project: str) -> dict[str, DataSourceSpec]:
    """COHORTS_SUGO_DATASOURCES ("name=events|users,...") as tables of project for the embedded broker."""
    mapping = {}
    for item in (part.strip() for part in settings.sugo_datasources.split(",")):
        if item:
            name, _, table = item.partition("=")
            mapping[name.strip()] = DataSourceSpec(project, table.strip() or "events")
    return mapping


def answer(job: dict) -> tuple[int, object]:
    """(HTTP status, body) for an ended job, in the seed's shape or a Druid-like error body."""
    if job["status"] == "succeed":
        result = job["result"] or {}
        if job["kind"] == "usergroup":
            return 200, [{"event": {"RowCount": result.get("count", 0)}}]
        return 200, {"success": result.get("success", 0), "failed": result.get("failed", 0),
                     "errors": result.get("errors", [])}
    code = job["error_code"] or "internal_error"
    return FAILURE_STATUS.get(code, 500), {"error": code, "errorMessage": job["error_message"], "errorClass": None,
                                           "host": None, "jobId": job["id"]}
