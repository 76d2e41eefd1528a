"""Shared fixtures: a real PostgreSQL database and Redis db of the tests' own, never a service's data."""

from __future__ import annotations

import os
import uuid

import psycopg2
import pytest
import redis as redis_lib

from cohort_engine import db
from cohort_engine.config import EngineConfig

TEST_DATABASE_URL = os.environ.get("COHORTS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/cohorts_test")
TEST_REDIS_URL = os.environ.get("COHORTS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _drop_database(dsn: str) -> None:
    name = dsn.rsplit("/", 1)[1]
    admin = db.connect(dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        admin.close()


@pytest.fixture(scope="session")
def database_url() -> str:
    """A freshly created and migrated test database, once per test session."""
    _drop_database(TEST_DATABASE_URL)
    db.migrate(TEST_DATABASE_URL)
    return TEST_DATABASE_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis_lib.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    client.close()
    return TEST_REDIS_URL


@pytest.fixture
def redis_client(redis_url):
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def pg(database_url):
    conn = psycopg2.connect(database_url)
    yield conn
    conn.close()


@pytest.fixture
def project(database_url):
    """A new project (name, id) with its own dictionary; time zone UTC unless changed with set_timezone."""
    name = "t" + uuid.uuid4().hex[:12]
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO projects (name) VALUES (%s) RETURNING id", (name,))
        project_id = cur.fetchone()[0]
    return name, project_id


def set_timezone(database_url: str, project_name: str, tz: str) -> None:
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE projects SET timezone = %s WHERE name = %s", (tz, project_name))


@pytest.fixture
def engine_config(database_url, redis_url, tmp_path) -> EngineConfig:
    return EngineConfig(database_url=database_url, redis_url=redis_url, store_dir=str(tmp_path / "store"),
                        key_prefix="cohorts-test", threads=2)
