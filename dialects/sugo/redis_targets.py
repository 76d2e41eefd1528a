"""Redis clients for Sugo's `dataConfig` / `userGroupConfig`: standalone, Redis Cluster or Sentinel.

A config is the JSON object Sugo requests carry, e.g.
`{"hostAndPorts": "10.0.0.1:6379,10.0.0.2:6379", "clusterMode": false, "sentinelMode": false,
"groupId": "..."}`. Every host named in it is checked against the caller's allowlist before any
connection is made, and so is every address a server reports back (Redis Cluster nodes from
CLUSTER SLOTS and MOVED/ASK redirects, a Sentinel's master): each TCP connection the client opens
goes through a connection class that asks the allowlist first. Clients are cached per process,
normalised config and allowlist, so jobs reuse pools.
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
from collections.abc import Callable, Mapping

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import Connection
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

CONNECT_TIMEOUT_SECONDS = 5.0
# Reading or writing a group of millions of ids moves tens of MB in one reply.
SOCKET_TIMEOUT_SECONDS = 120.0
# Sentinels answer small queries only.
SENTINEL_TIMEOUT_SECONDS = 5.0
# Redis Sentinel's conventional master name, used when a config names none.
DEFAULT_MASTER_NAME = "mymaster"
HEALTH_CHECK_INTERVAL_SECONDS = 30
# Fewer and shorter retries than redis-py's default (3, up to 10 s apart): a dead standalone host
# should fail over to the next one in the list quickly.
RETRIES = 2
RETRY_BACKOFF_BASE_SECONDS = 0.1
RETRY_BACKOFF_CAP_SECONDS = 1.0

HOSTS_FIELD = "hostAndPorts"
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")

Allow = Callable[[str, int], bool]


class SugoRedisConfigError(ValueError):
    """A dataConfig / userGroupConfig that cannot name a Redis; `field` is the offending field's path."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class HostNotAllowed(SugoRedisConfigError):
    """A host of the config (or one a server reported) is not in the allowlist; it was not contacted."""

    def __init__(self, field: str, host: str, port: int | None = None, reported: bool = False):
        where = format_address(host, port) if port is not None else host
        by = " (reported by the Redis Cluster or Sentinel)" if reported else ""
        super().__init__(field, f"{where}{by} is not an allowed Redis host")
        self.host = host
        self.port = port
        self.reported = reported


class NotACluster(SugoRedisConfigError):
    """clusterMode is true but the hosts are not a Redis Cluster (or cannot be read as one)."""


class NoReachableHost(redis.ConnectionError):
    """No host of a standalone config's list accepted a connection."""


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_host(part: str) -> tuple[str, int]:
    if part.startswith("["):
        close = part.find("]")
        if close < 0:
            raise ValueError(f"{part!r}: '[' without a closing ']'")
        host, rest = part[1:close], part[close + 1:]
        try:
            host = ipaddress.IPv6Address(host).compressed
        except ValueError:
            raise ValueError(f"{part!r}: {host!r} is not an IPv6 address") from None
        if not rest.startswith(":"):
            raise ValueError(f"{part!r}: expected host:port, the port is missing")
        port_text = rest[1:]
    else:
        if part.count(":") > 1:
            raise ValueError(f"{part!r}: an IPv6 address must be written in brackets, as [::1]:6379")
        host, colon, port_text = part.partition(":")
        if not colon:
            raise ValueError(f"{part!r}: expected host:port, the port is missing")
        if not _HOSTNAME.match(host):
            raise ValueError(f"{part!r}: {host!r} is not a host name or IPv4 address")
        host = host.lower()
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{part!r}: port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def parse_hosts(text: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of "h:p", "h:p,h:p" or "[v6]:p" text, in order, without duplicates."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string of host:port pairs, got {type(text).__name__}")
    hosts: list[tuple[str, int]] = []
    for position, raw in enumerate(text.split(","), start=1):
        part = raw.strip()
        if not part:
            raise ValueError(f"entry {position} of {text!r} is empty")
        address = _parse_host(part)
        if address not in hosts:
            hosts.append(address)
    return hosts


def _flag(config: Mapping, name: str, path: str) -> bool:
    value = config.get(name, False)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    # Sugo's Java service reads its config with a lenient JSON mapper that takes "true"/"false" too.
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise SugoRedisConfigError(_join(path, name), f"expected true or false, got {value!r}")


def _optional_text(config: Mapping, name: str, path: str) -> str | None:
    value = config.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SugoRedisConfigError(_join(path, name), f"expected a string, got {type(value).__name__}")
    return value


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def normalise(config: Mapping, path: str = "") -> tuple:
    """The connection-relevant part of a config as a hashable tuple, validated.

    Fields: hostAndPorts (required), clusterMode, sentinelMode, masterName (Sentinel; default
    "mymaster"), password, sentinelPassword, db (standalone and Sentinel only).
    """
    if not isinstance(config, Mapping):
        raise SugoRedisConfigError(path or "dataConfig", f"expected an object, got {type(config).__name__}")
    hosts_field = _join(path, HOSTS_FIELD)
    if HOSTS_FIELD not in config:
        raise SugoRedisConfigError(hosts_field, "is required")
    try:
        hosts = tuple(parse_hosts(config[HOSTS_FIELD]))
    except ValueError as exc:
        raise SugoRedisConfigError(hosts_field, str(exc)) from None
    cluster = _flag(config, "clusterMode", path)
    sentinel = _flag(config, "sentinelMode", path)
    if cluster and sentinel:
        raise SugoRedisConfigError(_join(path, "sentinelMode"), "clusterMode and sentinelMode cannot both be true")
    db = config.get("db", 0)
    if db is None:
        db = 0
    if isinstance(db, bool) or not isinstance(db, int) or db < 0:
        raise SugoRedisConfigError(_join(path, "db"), f"expected a non-negative integer, got {db!r}")
    if cluster and db != 0:
        raise SugoRedisConfigError(_join(path, "db"), "Redis Cluster has only database 0")
    mode = "cluster" if cluster else "sentinel" if sentinel else "standalone"
    master_name = (_optional_text(config, "masterName", path) or DEFAULT_MASTER_NAME) if sentinel else None
    return (mode, hosts, master_name, _optional_text(config, "password", path),
            _optional_text(config, "sentinelPassword", path), db)


_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def check_allowed(config: Mapping, allow: Allow, path: str = "") -> tuple:
    """The normalised config, or HostNotAllowed naming the first host the allowlist refuses."""
    normalised = normalise(config, path)
    for host, port in normalised[1]:
        if not allow(host, port):
            raise HostNotAllowed(_join(path, HOSTS_FIELD), host, port)
    return normalised


def _reported_host(host) -> str:
    host = str(host).lower()
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def guarded(base: type, allow: Allow) -> type:
    """A subclass of a redis-py connection class that refuses, before its socket opens, any address allow refuses."""

    class Guarded(base):
        def _connect(self):
            host, port = _reported_host(self.host), int(self.port)
            if not allow(host, port):
                raise HostNotAllowed(HOSTS_FIELD, host, port, reported=True)
            return super()._connect()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


def connect(config: Mapping, *, allow: Allow, path: str = ""):
    """A redis-py client for a Sugo dataConfig: Redis, RedisCluster, or a Sentinel-found master.

    `allow(host, port)` (hashable: it is part of the client cache key) must accept every host of
    hostAndPorts, else HostNotAllowed is raised before anything is contacted; any other address
    the client later connects to (cluster nodes, redirects, the Sentinel's master) raises
    HostNotAllowed(reported=True) instead of connecting. Bad fields raise SugoRedisConfigError
    naming `path.field`. Standalone: the first host of the list that answers PING.
    """
    normalised = check_allowed(config, allow, path)
    cache_key = (os.getpid(), normalised, allow)
    with _clients_lock:
        client = _clients.get(cache_key)
    if client is not None and (normalised[0] != "standalone" or _answers(client)):
        return client
    try:
        client = _open(*normalised, allow=allow)
    except RedisClusterException as exc:
        # redis-py raises this (not a RedisError) when the startup nodes are no cluster.
        raise NotACluster(_join(path, "clusterMode"), f"is true but {config[HOSTS_FIELD]} is not a usable Redis "
                                                      f"Cluster: {exc}") from None
    with _clients_lock:
        previous = _clients.get(cache_key)
        _clients[cache_key] = client
    if previous is not None and previous is not client:
        _close_quietly(previous)
    return client


def _retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=RETRY_BACKOFF_BASE_SECONDS, cap=RETRY_BACKOFF_CAP_SECONDS),
                 RETRIES)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False


def _close_quietly(client) -> None:
    try:
        client.close()
    except redis.RedisError:
        pass


def _open(mode: str, hosts: tuple, master_name: str | None, password: str | None,
          sentinel_password: str | None, db: int, *, allow: Allow):
    common = {"password": password, "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
              "socket_timeout": SOCKET_TIMEOUT_SECONDS}
    if mode == "cluster":
        # Only with a url does redis-py build each node's pool from our kwargs (connection_class
        # included), for the startup nodes and every node CLUSTER SLOTS or a redirect names.
        (first_host, first_port), rest = hosts[0], hosts[1:]
        return RedisCluster(url=f"redis://{format_address(first_host, first_port)}/0",
                            startup_nodes=[ClusterNode(host, port) for host, port in rest],
                            connection_class=guarded(Connection, allow), **common)
    if mode == "sentinel":
        # The sentinels are hostAndPorts (checked already); the master they report is checked on connect.
        sentinel = Sentinel(
            list(hosts), db=db, health_check_interval=HEALTH_CHECK_INTERVAL_SECONDS, retry=_retry(), **common,
            connection_class=guarded(SentinelManagedConnection, allow),
            sentinel_kwargs={"password": sentinel_password, "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
                             "socket_timeout": SENTINEL_TIMEOUT_SECONDS})
        return sentinel.master_for(master_name)
    failures = []
    for host, port in hosts:
        # A probe without redis-py's default retries and backoff, so a dead host costs one attempt.
        probe = redis.Redis(host=host, port=port, db=db, retry=Retry(NoBackoff(), 0), **common)
        try:
            probe.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            failures.append(f"{format_address(host, port)}: {exc}")
            continue
        finally:
            _close_quietly(probe)
        return redis.Redis(host=host, port=port, db=db, health_check_interval=HEALTH_CHECK_INTERVAL_SECONDS,
                           retry=_retry(), **common)
    raise NoReachableHost("no Redis host answered: " + "; ".join(failures))


def clear_cache() -> None:
    """Close and forget every cached client of this process."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        _close_quietly(client)
