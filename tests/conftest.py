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


# -- the job system: settings shared by the test process and real worker / beat subprocesses ----------

TEST_BROKER_URL = os.environ.get("COHORTS_TEST_BROKER_URL", "redis://127.0.0.1:6379/14")


@pytest.fixture(scope="session")
def service_env(database_url, redis_url, tmp_path_factory) -> dict:
    """Environment for worker/beat subprocesses: test database, test Redis dbs, fast heartbeats."""
    store = tmp_path_factory.mktemp("service-store")
    import_dir = tmp_path_factory.mktemp("import-dir")
    broker = redis_lib.Redis.from_url(TEST_BROKER_URL)
    broker.flushdb()
    broker.close()
    return {
        **os.environ,
        "COHORTS_DATABASE_URL": database_url,
        "COHORTS_REDIS_URL": redis_url,
        "COHORTS_BROKER_URL": TEST_BROKER_URL,
        "COHORTS_STORE_DIR": str(store),
        "COHORTS_IMPORT_DIR": str(import_dir),
        "COHORTS_KEY_PREFIX": "cohorts-test",
        "COHORTS_THREADS": "1",
        "COHORTS_HEARTBEAT_INTERVAL": "0.5",
        "COHORTS_STALE_AFTER": "3",
        "COHORTS_SWEEP_INTERVAL": "1",
        "COHORTS_SCHEDULE_INTERVAL": "0.5",
        "COHORTS_RETRY_DELAY": "0.5",
        "COHORTS_MAX_ATTEMPTS": "3",
        "COHORTS_SOFT_TIME_LIMIT": "60",
        "COHORTS_HARD_TIME_LIMIT": "90",
        "COHORTS_BACKOFF_BASE": "2",
        "COHORTS_BACKOFF_MAX": "30",
        # Webhook retries in tenths of a second (tests/app/test_webhooks.py measures the doubling).
        "COHORTS_WEBHOOK_BACKOFF_BASE": "0.2",
        "COHORTS_WEBHOOK_MAX_ATTEMPTS": "4",
        "COHORTS_WEBHOOK_TIMEOUT": "3",
    }


@pytest.fixture(scope="session")
def service_settings(service_env):
    from core.settings import Settings

    return Settings.from_env(service_env)


@pytest.fixture(scope="session")
def celery_app(service_settings):
    """A Celery app on the test broker, used to send tasks and ping workers (it runs no task itself)."""
    from workers.celery_app import create_celery

    return create_celery(service_settings)


@pytest.fixture(scope="session")
def worker(service_env, celery_app, tmp_path_factory):
    """One real prefork worker for the session's job tests."""
    from tests.services import start_worker, stop, wait_for_worker

    log = tmp_path_factory.mktemp("logs") / "worker-main.log"
    process = start_worker(service_env, "main", log)
    try:
        wait_for_worker(celery_app, "main")
        yield process
    finally:
        stop(process)


@pytest.fixture(scope="session")
def maintenance_worker(service_env, celery_app, tmp_path_factory):
    """The sweep/schedule worker (its own queue, as in the Procfile); every beat fixture needs it."""
    from tests.services import start_maintenance_worker, stop, wait_for_worker

    process = start_maintenance_worker(service_env, tmp_path_factory.mktemp("logs") / "worker-maintenance.log")
    try:
        wait_for_worker(celery_app, "maintenance")
        yield process
    finally:
        stop(process)


@pytest.fixture
def app(service_settings, celery_app):
    from app import create_app

    return create_app({"TESTING": True, "SETTINGS": service_settings, "CELERY": celery_app})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def api_project(project, database_url):
    """A project with an API token: (name, id, headers)."""
    from core.data.projects import set_token

    name, project_id = project
    token = "tok-" + uuid.uuid4().hex
    with db.connection(database_url) as conn:
        set_token(conn, name, token)
    return name, project_id, {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def live_server(service_settings, celery_app):
    """The service's web app on a real loopback port (werkzeug in a thread): .url; for the CLI and the browser."""
    from app import create_app
    from tests.services import LiveServer

    server = LiveServer(create_app({"TESTING": True, "SETTINGS": service_settings, "CELERY": celery_app}))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def small_sample(database_url, service_settings, tmp_path_factory):
    """A token project with 1,500 sample users and 60,000 events: (name, id, token, sample files).

    tests.tasks.conftest.slow_definition(40) takes a second or two over it, leaf by leaf (progress to watch).
    """
    from tests.services import create_sample_project

    return create_sample_project(database_url, service_settings.engine, tmp_path_factory.mktemp("small-sample"),
                                 1500, 60_000, seed=5, prefix="m")
