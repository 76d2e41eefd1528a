"""Sugo dataConfig connections against real standalone, cluster and sentinel Redis servers."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError
from redis.sentinel import MasterNotFoundError

from dialects.sugo import groups as sugo_groups
from dialects.sugo import redis_targets as sugo_redis
from dialects.sugo.groups import CHUNK_BYTES
from dialects.sugo.redis_targets import HostNotAllowed, SugoRedisConfigError, connect, parse_hosts
from tests import redis_topologies
from tests.redis_topologies import HOST, free_port, standalone_server

# The session-scoped real servers, as fixtures of this module.
redis_cluster = redis_topologies.redis_cluster
redis_sentinel = redis_topologies.redis_sentinel
redis_standalone = redis_topologies.redis_standalone


def allow_loopback(host: str, port: int) -> bool:
    return host == HOST


def java_chunks(ids: list[str]) -> list[bytes]:
    """Sugo's Java layout built independently: "<count>\\t" + "id\\t"..., UTF-8, cut every 1 MiB."""
    data = (str(len(ids)) + "\t" + "".join(uid + "\t" for uid in ids)).encode("utf-8")
    return [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]


def big_unicode_ids(count: int = 140_000, tag: str = "") -> list[str]:
    # Multi-byte ids of uneven length: over 1 MiB, so cuts fall inside ids and characters.
    return [f"用户{tag}{i:06d}-{'é' * (i % 4)}😀" for i in range(count)]


@pytest.fixture(scope="module", autouse=True)
def close_cached_clients():
    yield
    sugo_redis.clear_cache()


def test_topologies_are_torn_down_even_when_the_body_fails():
    with pytest.raises(RuntimeError, match="body failed"):
        with standalone_server() as server:
            process, directory = server.process, os.path.dirname(server.directory)
            assert server.client().ping()
            raise RuntimeError("body failed")
    assert process.poll() is not None
    assert not os.path.exists(directory)


# -- parse_hosts --------------------------------------------------------------------------------------

def test_parse_hosts_accepts_lists_whitespace_ipv6_and_drops_duplicates():
    assert parse_hosts("192.168.0.223:6379") == [("192.168.0.223", 6379)]
    assert parse_hosts(" a.example:1 ,\tB.Example:2,a.example:1 ") == [("a.example", 1), ("b.example", 2)]
    assert parse_hosts("[::1]:7000,[2001:DB8:0:0::1]:7001") == [("::1", 7000), ("2001:db8::1", 7001)]
    assert parse_hosts("redis_1:65535") == [("redis_1", 65535)]


@pytest.mark.parametrize(("text", "message"), [
    ("", "entry 1 of '' is empty"),
    ("h:1,,h:2", "entry 2 of 'h:1,,h:2' is empty"),
    ("h:1,", "entry 2"),
    ("h1:6379,h2", "'h2': expected host:port, the port is missing"),
    ("h:0", "port '0' is not a number from 1 to 65535"),
    ("h:65536", "port '65536'"),
    ("h:6a", "port '6a'"),
    ("h:", "port ''"),
    ("h:٣", "port '٣'"),
    ("::1:6379", "must be written in brackets"),
    ("[::1:6379", "without a closing"),
    ("[::zz]:1", "'::zz' is not an IPv6 address"),
    ("[::1]6379", "port is missing"),
    ("user@h:1", "'user@h' is not a host name"),
    ("a b:1", "'a b' is not a host name"),
    ("redis://h:1", "must be written in brackets"),
    ("h/x:1", "'h/x' is not a host name"),
])
def test_parse_hosts_names_the_bad_part(text, message):
    with pytest.raises(ValueError) as caught:
        parse_hosts(text)
    assert message in str(caught.value)


def test_parse_hosts_refuses_non_text():
    with pytest.raises(ValueError, match="expected a string"):
        parse_hosts(["h:1"])


# -- config validation --------------------------------------------------------------------------------

@pytest.mark.parametrize(("config", "field", "message"), [
    ({"clusterMode": False}, "query.dataConfig.hostAndPorts", "is required"),
    ({"hostAndPorts": "h"}, "query.dataConfig.hostAndPorts", "port is missing"),
    ({"hostAndPorts": 6379}, "query.dataConfig.hostAndPorts", "expected a string"),
    ({"hostAndPorts": "h:1", "clusterMode": "yes"}, "query.dataConfig.clusterMode", "expected true or false"),
    ({"hostAndPorts": "h:1", "clusterMode": True, "sentinelMode": True}, "query.dataConfig.sentinelMode", "both"),
    ({"hostAndPorts": "h:1", "sentinelMode": True, "masterName": 3}, "query.dataConfig.masterName", "string"),
    ({"hostAndPorts": "h:1", "db": -1}, "query.dataConfig.db", "non-negative"),
    ({"hostAndPorts": "h:1", "clusterMode": True, "db": 2}, "query.dataConfig.db", "only database 0"),
    ("h:1", "query.dataConfig", "expected an object"),
])
def test_bad_configs_name_the_field(config, field, message):
    with pytest.raises(SugoRedisConfigError) as caught:
        connect(config, allow=lambda host, port: pytest.fail("nothing may be checked for a bad config"),
                path="query.dataConfig")
    assert caught.value.field == field
    assert str(caught.value).startswith(field + ": ") and message in str(caught.value)


def test_config_error_without_path_names_the_bare_field():
    with pytest.raises(SugoRedisConfigError) as caught:
        connect({"hostAndPorts": "h:1", "sentinelMode": "maybe"}, allow=allow_loopback)
    assert caught.value.field == "sentinelMode"


def test_equivalent_configs_normalise_alike():
    a = sugo_redis.normalise({"hostAndPorts": "H:1, h:2", "clusterMode": "false", "groupId": "x"})
    b = sugo_redis.normalise({"hostAndPorts": "h:1,h:2,h:1", "clusterMode": False, "sentinelMode": None})
    assert a == b
    assert sugo_redis.normalise({"hostAndPorts": "h:1", "sentinelMode": True})[2] == "mymaster"


# -- allowlist: refused before anything is contacted ------------------------------------------------

@contextlib.contextmanager
def counting_listener():
    """A listening socket nobody accepts on: any client connect completes into its backlog."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen(16)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def connections_made(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_counting_listener_does_see_a_connection():
    # The detector the refusal tests rely on: a connect, once returned, is in the backlog.
    with counting_listener() as sock:
        socket.create_connection(sock.getsockname(), timeout=5).close()
        assert connections_made(sock) == 1


@pytest.mark.parametrize("mode", [{}, {"clusterMode": True}, {"sentinelMode": True, "masterName": "m"}])
def test_a_host_outside_the_allowlist_is_refused_before_any_connection(mode):
    with counting_listener() as allowed, counting_listener() as refused:
        allowed_port, refused_port = allowed.getsockname()[1], refused.getsockname()[1]
        seen = []

        def allow(host, port):
            seen.append((host, port))
            return port == allowed_port

        # The allowed host comes first, so a client that connected as it went would contact it.
        config = {"hostAndPorts": f"{HOST}:{allowed_port}, {HOST}:{refused_port}", **mode, "groupId": "g"}
        with pytest.raises(HostNotAllowed) as caught:
            connect(config, allow=allow, path="userGroupConfig")
        assert (caught.value.field, caught.value.host, caught.value.port) == (
            "userGroupConfig.hostAndPorts", HOST, refused_port)
        assert str(caught.value) == (f"userGroupConfig.hostAndPorts: {HOST}:{refused_port} "
                                     "is not an allowed Redis host")
        assert seen == [(HOST, allowed_port), (HOST, refused_port)]
        assert connections_made(allowed) == 0
        assert connections_made(refused) == 0


def test_refusal_names_an_ipv6_host_in_brackets():
    with pytest.raises(HostNotAllowed, match=r"hostAndPorts: \[::1\]:6379 is not an allowed"):
        connect({"hostAndPorts": "[::1]:6379"}, allow=allow_loopback)


def test_allowlist_is_checked_again_when_a_client_is_cached(redis_standalone):
    config = {"hostAndPorts": redis_standalone.address}
    connect(config, allow=allow_loopback)
    with pytest.raises(HostNotAllowed):
        connect(config, allow=lambda host, port: False)


# -- standalone ------------------------------------------------------------------------------------

def test_standalone_on_an_allowlisted_non_default_port_round_trips_a_big_unicode_group(redis_standalone):
    assert redis_standalone.port != 6379
    dead_port = free_port()  # nothing listens: refused at once, so the next host is used
    config = {"hostAndPorts": f"{HOST}:{dead_port},{redis_standalone.address}", "clusterMode": False,
              "sentinelMode": False, "groupId": "用户分群-standalone"}
    client = connect(config, allow=allow_loopback)
    assert isinstance(client, redis.Redis)
    assert client.connection_pool.connection_kwargs["port"] == redis_standalone.port
    assert client.connection_pool.connection_kwargs["socket_connect_timeout"] == 5

    ids = big_unicode_ids()
    expected = java_chunks(ids)
    assert len(expected) >= 3
    assert sugo_groups.write_group(client, config["groupId"], ids) == len(ids)
    direct = redis_standalone.client()
    try:
        assert direct.lrange(config["groupId"], 0, -1) == expected
    finally:
        direct.close()
    assert sugo_groups.read_group(client, config["groupId"]) == ids


def test_no_reachable_host_is_a_connection_error():
    config = {"hostAndPorts": f"{HOST}:{free_port()},{HOST}:{free_port()}"}
    with pytest.raises(sugo_redis.NoReachableHost, match="no Redis host answered") as caught:
        connect(config, allow=allow_loopback)
    assert isinstance(caught.value, redis.ConnectionError)


def test_clients_are_cached_per_normalised_config_and_per_process(redis_standalone):
    first = connect({"hostAndPorts": redis_standalone.address, "groupId": "a"}, allow=allow_loopback)
    again = connect({"hostAndPorts": f" {redis_standalone.address} ", "clusterMode": "false", "groupId": "b"},
                    allow=allow_loopback)
    assert again is first
    other_db = connect({"hostAndPorts": redis_standalone.address, "db": 3}, allow=allow_loopback)
    assert other_db is not first and other_db.connection_pool.connection_kwargs["db"] == 3

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child must open its own pool, never share the parent's sockets
        try:
            child = connect({"hostAndPorts": redis_standalone.address}, allow=allow_loopback)
            ok = child is not first and child.ping()
            os.write(write_end, b"ok" if ok else b"shared")
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 16)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert answer == b"ok"


def test_a_cached_standalone_client_moves_to_the_next_host_when_its_host_dies():
    with standalone_server() as first, standalone_server() as second:
        config = {"hostAndPorts": f"{first.address},{second.address}"}
        client = connect(config, allow=allow_loopback)
        assert client.connection_pool.connection_kwargs["port"] == first.port
        first.stop()
        moved = connect(config, allow=allow_loopback)
        assert moved.connection_pool.connection_kwargs["port"] == second.port
        assert moved.ping()


def test_password_is_used():
    with standalone_server(password="s3cret") as server:
        with pytest.raises(sugo_redis.NoReachableHost, match="(?i)auth"):
            connect({"hostAndPorts": server.address}, allow=allow_loopback)
        client = connect({"hostAndPorts": server.address, "password": "s3cret"}, allow=allow_loopback)
        sugo_groups.write_group(client, "g", ["a", "b"])
        direct = server.client()
        try:
            assert direct.lrange("g", 0, -1) == [b"2\ta\tb\t"]
        finally:
            direct.close()


# -- Redis Cluster ----------------------------------------------------------------------------------

def cluster_config(topology, group_id: str = "g") -> dict:
    return {"hostAndPorts": topology.host_and_ports, "clusterMode": True, "groupId": group_id}


def owner_of(topology, key: str):
    """The node holding key, found by asking every node directly (only the owner has it)."""
    holders = []
    for node in topology.nodes:
        client = node.client()
        try:
            slot = client.execute_command("CLUSTER", "KEYSLOT", key)
            if client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) and client.exists(key):
                holders.append(node)
        finally:
            client.close()
    assert len(holders) == 1, f"{key!r} held by {len(holders)} nodes"
    return holders[0]


def server_slot(topology, key: str) -> int:
    client = topology.nodes[0].client()
    try:
        return client.execute_command("CLUSTER", "KEYSLOT", key)
    finally:
        client.close()


def leftover_temp_keys(topology) -> list[bytes]:
    found = []
    for node in topology.nodes:
        client = node.client()
        try:
            found += client.keys("*:tmp:*")
        finally:
            client.close()
    return found


def test_cluster_mode_round_trips_a_big_unicode_group(redis_cluster):
    config = cluster_config(redis_cluster, "用户分群-cluster")
    client = connect(config, allow=allow_loopback)
    assert isinstance(client, RedisCluster)
    node_kwargs = client.get_default_node().redis_connection.connection_pool.connection_kwargs
    assert node_kwargs["socket_connect_timeout"] == 5
    ids = big_unicode_ids(tag="c")
    assert sugo_groups.write_group(client, config["groupId"], ids) == len(ids)
    node = owner_of(redis_cluster, config["groupId"])
    direct = node.client()
    try:
        assert direct.lrange(config["groupId"], 0, -1) == java_chunks(ids)
    finally:
        direct.close()
    assert sugo_groups.read_group(client, config["groupId"]) == ids
    assert leftover_temp_keys(redis_cluster) == []


BRACE_KEYS = ["plain", "{tag}rest", "pre{tag}post", "a{b", "a}b", "{}x", "x{}y}", "}{", "a{b}c{d}", "用户{组}",
              "{", "}", "{{a}}", "a{}", "{a}", "", "k}{v}", "{}{x}"]


def test_temp_keys_share_the_group_key_slot_by_the_servers_own_rules(redis_cluster):
    for key in BRACE_KEYS:
        temp = sugo_groups.temp_key_for(key, "0123abcd")
        assert server_slot(redis_cluster, temp) == server_slot(redis_cluster, key), (key, temp)
        assert sugo_groups.cluster_slot(key) == server_slot(redis_cluster, key), key
        if "{" not in key and key:
            assert temp.startswith(f"{key}:tmp:")


def test_naive_temp_keys_would_be_refused_by_the_cluster(redis_cluster):
    # The control for the test above, asked of a server directly (redis-py would refuse client-side).
    key = "plain-key"
    direct = redis_cluster.nodes[0].client()
    try:
        with pytest.raises(ClusterCrossSlotError):
            direct.rename(f"{key}:tmp:0123abcd", key)
        with pytest.raises(redis.ResponseError) as caught:
            direct.rename(sugo_groups.temp_key_for(key, "0123abcd"), key)
        # MOVED or "no such key": either way the server found both keys in one slot.
        assert not isinstance(caught.value, ClusterCrossSlotError)
    finally:
        direct.close()


def test_group_ids_with_braces_write_and_read_in_a_cluster(redis_cluster):
    client = connect(cluster_config(redis_cluster), allow=allow_loopback)
    for index, key in enumerate(BRACE_KEYS):
        ids = [f"{key}-{n}" for n in range(index + 1)]
        assert sugo_groups.write_group(client, key, ids) == len(ids)
        assert sugo_groups.read_group(client, key) == ids
        owner = owner_of(redis_cluster, key)
        direct = owner.client()
        try:
            assert direct.lrange(key, 0, -1) == java_chunks(ids)
            assert direct.ttl(key) == -1
        finally:
            direct.close()
    assert leftover_temp_keys(redis_cluster) == []
    assert sugo_groups.delete_groups(client, BRACE_KEYS) == len(BRACE_KEYS)


def test_cluster_groups_spread_over_every_node_and_deleting_temporary_groups_works(redis_cluster):
    client = connect(cluster_config(redis_cluster), allow=allow_loopback)
    keys = [f"tindex_spread_{n}" for n in range(40)]
    for n, key in enumerate(keys):
        sugo_groups.write_group(client, key, [f"u{n}-{i}" for i in range(n + 1)])
    owners = {owner_of(redis_cluster, key).port for key in keys}
    assert owners == {node.port for node in redis_cluster.nodes}
    for n, key in enumerate(keys):
        assert sugo_groups.read_group(client, key) == [f"u{n}-{i}" for i in range(n + 1)]

    assert sugo_groups.delete_groups(client, keys[:30]) == 30
    for key in keys[:30]:
        assert not client.exists(key)
    assert all(client.exists(key) for key in keys[30:])
    assert sugo_groups.delete_groups(client, keys) == 10


def test_cluster_failure_midway_leaves_the_previous_group(redis_cluster):
    client = connect(cluster_config(redis_cluster), allow=allow_loopback)
    key = "cluster-midway"
    sugo_groups.write_group(client, key, ["old1", "old2"])
    ids = [f"id-{i:09d}" for i in range(sugo_groups.ENCODE_BATCH * 2)] + ["bad\tid"]
    with pytest.raises(sugo_groups.SugoGroupFormatError, match="bad"):
        sugo_groups.write_group(client, key, ids)
    assert sugo_groups.read_group(client, key) == ["old1", "old2"]
    assert leftover_temp_keys(redis_cluster) == []


def test_cluster_rewrites_are_atomic_for_a_concurrent_reader(redis_cluster):
    client = connect(cluster_config(redis_cluster), allow=allow_loopback)
    keys = [f"atomic-{n}" for n in range(8)] + ["atomic-big"]
    versions = {}
    for key in keys:
        size = 70_000 if key == "atomic-big" else 50
        # Two versions of different lengths and chunk counts, so a torn read could not pass for either.
        versions[key] = ([f"{key}-a{i}" for i in range(size)], [f"{key}-bb{i}" for i in range(size + 7)])
        sugo_groups.write_group(client, key, versions[key][0])
    assert len(java_chunks(versions["atomic-big"][1])) >= 2

    done = threading.Event()
    errors: list[BaseException] = []

    def rewrite():
        try:
            for round_ in range(12):
                for key in keys:
                    sugo_groups.write_group(client, key, versions[key][(round_ + 1) % 2])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    seen = {key: set() for key in keys}
    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        while not done.is_set():
            for key in keys:
                got = sugo_groups.read_group(client, key)
                assert got in versions[key], f"{key}: read {len(got)} ids matching neither version"
                seen[key].add(versions[key].index(got))
    finally:
        done.wait()
        writer.join()
    assert not errors, errors
    assert any(len(versions_seen) == 2 for versions_seen in seen.values())
    assert leftover_temp_keys(redis_cluster) == []


def test_a_dead_startup_node_in_a_cluster_list_is_skipped(redis_cluster):
    # A dead startup node in the list is skipped: the others describe the whole cluster.
    config = {"hostAndPorts": f"{HOST}:{free_port()},{redis_cluster.host_and_ports}", "clusterMode": "true"}
    client = connect(config, allow=allow_loopback)
    sugo_groups.write_group(client, "after-dead-startup-node", ["x"])
    assert sugo_groups.read_group(client, "after-dead-startup-node") == ["x"]


# -- Sentinel ---------------------------------------------------------------------------------------

def sentinel_config(topology, **extra) -> dict:
    return {"hostAndPorts": topology.host_and_ports, "clusterMode": False, "sentinelMode": True,
            "masterName": topology.master_name, "password": topology.password, "groupId": "g", **extra}


def test_sentinel_mode_finds_the_master_and_round_trips_a_big_group(redis_sentinel):
    client = connect(sentinel_config(redis_sentinel), allow=allow_loopback)
    assert client.connection_pool.get_master_address() == (HOST, redis_sentinel.master.port)
    assert client.connection_pool.connection_kwargs["socket_connect_timeout"] == 5
    ids = big_unicode_ids(tag="s")
    key = "用户分群-sentinel"
    assert sugo_groups.write_group(client, key, ids) == len(ids)
    direct = redis_sentinel.master.client()
    try:
        assert direct.lrange(key, 0, -1) == java_chunks(ids)
        assert direct.info("server")["tcp_port"] == redis_sentinel.master.port
    finally:
        direct.close()
    assert sugo_groups.read_group(client, key) == ids


def test_sentinel_mode_with_an_unknown_master_name_fails(redis_sentinel):
    config = sentinel_config(redis_sentinel)
    del config["masterName"]  # the default, "mymaster", is not monitored here
    client = connect(config, allow=allow_loopback)
    with pytest.raises(MasterNotFoundError, match="mymaster"):
        client.ping()


def test_every_sentinel_host_must_be_allowed(redis_sentinel):
    config = sentinel_config(redis_sentinel)
    with pytest.raises(HostNotAllowed, match=str(redis_sentinel.sentinel.port)):
        connect(config, allow=lambda host, port: port == redis_sentinel.master.port)


# -- addresses the servers report pass the allowlist too -------------------------------------------


def test_cluster_concurrent_appends_never_lose_ids(redis_cluster):
    import threading

    client = connect({"hostAndPorts": redis_cluster.host_and_ports, "clusterMode": True}, allow=allow_loopback)
    key = f"race-{os.getpid()}-{threading.get_ident()}"
    sugo_groups.write_group(client, key, ["existing"])
    id_sets = [{f"w{w}-{i}" for i in range(300)} for w in range(4)]
    threads = [threading.Thread(target=sugo_groups.update_group,
                                args=(client, key, lambda current, ids=ids: sorted(set(current) | ids)))
               for ids in id_sets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert set(sugo_groups.read_group(client, key)) == {"existing"}.union(*id_sets)
    assert not client.exists(sugo_groups.lock_key_for(key))


def _allow_only(*addresses):
    allowed = {(HOST, int(a.rsplit(":", 1)[1])) for a in addresses}
    return lambda host, port: (host, port) in allowed


def test_cluster_nodes_reported_by_cluster_slots_pass_the_allowlist(redis_cluster):
    first = redis_cluster.nodes[0]
    client = connect({"hostAndPorts": first.address, "clusterMode": True}, allow=_allow_only(first.address))
    owners = {client.get_node_from_key(f"k{i}").port: f"k{i}" for i in range(200)}
    assert set(owners) == {n.port for n in redis_cluster.nodes}
    client.set(owners[first.port], "1")  # the allowed node serves its own slots
    for port, key in owners.items():
        if port != first.port:
            with pytest.raises(HostNotAllowed, match=f"{HOST}:{port} \\(reported by"):
                client.set(key, "1")


def test_a_moved_redirect_to_a_node_outside_the_allowlist_is_refused():
    """A slot really moves to a node the allowlist refuses: the MOVED answer names it, the client may not go."""
    with redis_topologies.redis_cluster_topology() as cluster:
        first, second, third = cluster.nodes
        client = connect({"hostAndPorts": first.address, "clusterMode": True},
                         allow=_allow_only(first.address, second.address))
        key = next(f"m{i}" for i in range(500) if client.get_node_from_key(f"m{i}").port == first.port)
        assert client.get(key) is None  # the client knows the slot at `first`
        slot = sugo_groups.cluster_slot(key)
        third_id = third.client().execute_command("CLUSTER", "MYID")
        for node in cluster.nodes:  # the empty slot changes hands, as a resharding does
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", third_id)
        with pytest.raises(HostNotAllowed, match=f"{HOST}:{third.port} \\(reported by"):
            client.get(key)
        client.close()


def test_a_sentinels_master_outside_the_allowlist_is_refused(redis_sentinel):
    config = {"hostAndPorts": redis_sentinel.host_and_ports, "sentinelMode": True,
              "masterName": redis_sentinel.master_name, "password": redis_sentinel.password}
    before = redis_sentinel.master.client().info("stats")["total_connections_received"]
    client = connect(config, allow=_allow_only(redis_sentinel.host_and_ports))
    with pytest.raises(HostNotAllowed, match=f"{redis_sentinel.master.address} \\(reported by"):
        client.set("x", "1")
    after = redis_sentinel.master.client().info("stats")["total_connections_received"]
    assert after - before == 1  # only this test's own INFO client
    allowed = connect(config, allow=_allow_only(redis_sentinel.host_and_ports, redis_sentinel.master.address))
    assert allowed.set("x", "1")


def test_cluster_mode_against_a_standalone_server_names_cluster_mode(redis_standalone):
    with pytest.raises(sugo_redis.NotACluster, match="clusterMode: is true but"):
        connect({"hostAndPorts": redis_standalone.address, "clusterMode": True}, allow=allow_loopback,
                path="query.dataConfig")
