"""`python -m core.manage`: project tokens and each project's Sugo targets, against the test database."""

from __future__ import annotations

import pytest

from cohort_engine import db
from core import manage
from core.data import sugo_targets


@pytest.fixture
def env(monkeypatch, database_url, service_settings):
    """The service's settings as the command reads them: the test database and Redis databases."""
    monkeypatch.setenv("COHORTS_DATABASE_URL", database_url)
    monkeypatch.setenv("COHORTS_REDIS_URL", service_settings.engine.redis_url)
    monkeypatch.setenv("COHORTS_BROKER_URL", service_settings.broker_url)
    return service_settings


def targets(database_url, project_id):
    with db.connection(database_url) as conn:
        return sugo_targets.for_project(conn, project_id)


def test_sugo_allow_lists_and_deny(env, project, database_url, capsys):
    name, project_id = project
    assert manage.main(["sugo-allow", name, "--redis", "10.0.0.7:6379/2", "--redis", "[::1]:7000",
                        "--hproxy", "Hproxy.example:8085", "--broker", "10.0.0.9:8082"]) == 0
    assert targets(database_url, project_id) == [
        {"kind": "broker", "host": "10.0.0.9", "port": 8082, "db": 0},
        {"kind": "hproxy", "host": "hproxy.example", "port": 8085, "db": 0},
        {"kind": "redis", "host": "10.0.0.7", "port": 6379, "db": 2},
        {"kind": "redis", "host": "::1", "port": 7000, "db": 0}]
    assert manage.main(["sugo-allow", name, "--redis", "10.0.0.7:6379/2"]) == 0
    assert "already allowed" in capsys.readouterr().out
    assert manage.main(["sugo-targets", name]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "broker 10.0.0.9:8082", "hproxy hproxy.example:8085", "redis 10.0.0.7:6379/2", "redis [::1]:7000/0"]
    assert manage.main(["sugo-deny", name, "--redis", "10.0.0.7:6379/2", "--hproxy", "hproxy.example:8085"]) == 0
    assert [t["kind"] for t in targets(database_url, project_id)] == ["broker", "redis"]
    assert manage.main(["sugo-deny", name, "--all"]) == 0
    assert targets(database_url, project_id) == []


@pytest.mark.parametrize("flags, message", [
    (["--redis", "10.0.0.7"], "port is missing"),
    (["--redis", "10.0.0.7:6379/x"], "not a non-negative integer"),
    (["--hproxy", "10.0.0.7:8085/1"], "only a Redis target has a /db"),
    ([], "name at least one"),
])
def test_sugo_allow_refuses_bad_targets(env, project, database_url, capsys, flags, message):
    assert manage.main(["sugo-allow", project[0], *flags]) == 2
    assert message in capsys.readouterr().err
    assert targets(database_url, project[1]) == []


def test_the_services_own_redis_databases_cannot_be_allowed(env, project, database_url, capsys):
    from urllib.parse import urlsplit

    for url in (env.engine.redis_url, env.broker_url):
        parts = urlsplit(url)
        for host in (parts.hostname, "localhost"):
            target = f"{host}:{parts.port or 6379}/{parts.path.strip('/') or 0}"
            assert manage.main(["sugo-allow", project[0], "--redis", target]) == 2
            assert "never a Sugo target" in capsys.readouterr().err
    assert targets(database_url, project[1]) == []


def test_an_unknown_project_is_refused(env, capsys):
    assert manage.main(["sugo-targets", "no-such-project"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_redis_target_names_one_host(env, project, capsys):
    assert manage.main(["sugo-allow", project[0], "--redis", "a:1,b:2"]) == 2
    assert "one host:port per target" in capsys.readouterr().err


def test_the_retired_operator_wide_allowlist_is_reported_when_set(caplog):
    from core.settings import Settings

    with caplog.at_level("WARNING", logger="core.settings"):
        Settings.from_env({"COHORTS_SUGO_ALLOWED_HOSTS": "10.0.0.1:6379"})
    assert "COHORTS_SUGO_ALLOWED_HOSTS is no longer read" in caplog.text


def test_druid_backend_needs_allowed_brokers_and_never_shows_the_password(env, project, database_url, capsys,
                                                                           monkeypatch):
    from core.data import projects

    name, project_id = project
    flags = ["druid-backend", name, "--brokers", "http://Broker.example:8082/druid/v2", "--events", "ev",
             "--profiles", "users", "--column", "events.paid=boolean", "--column", "profiles.signup=signup_ms:time",
             "--username", "svc", "--password-env", "DRUID_TEST_PASSWORD"]
    monkeypatch.setenv("DRUID_TEST_PASSWORD", "s3cret-pw")
    assert manage.main(flags) == 2
    err = capsys.readouterr().err
    assert "broker.example:8082 is not allowed" in err and "sugo-allow" in err
    with db.connection(database_url) as conn:
        assert projects.backend(conn, project_id) == {"kind": "embedded"}  # nothing written
    assert manage.main(["sugo-allow", name, "--broker", "broker.example:8082"]) == 0
    assert manage.main(flags) == 0
    out = capsys.readouterr().out
    assert "backend druid" in out and "s3cret-pw" not in out
    with db.connection(database_url) as conn:
        stored = projects.backend(conn, project_id)
    assert stored["password"] == "s3cret-pw" and stored["columns"] == {
        "events": {"paid": {"kind": "boolean"}}, "profiles": {"signup": {"kind": "time", "column": "signup_ms"}}}
    assert manage.main(["druid-backend", name, "--show"]) == 0
    shown = capsys.readouterr().out
    assert '"password_set": true' in shown and "s3cret-pw" not in shown and '"signup_ms"' in shown
    assert manage.main(["druid-backend", name, "--brokers", "h:1", "--events", "e", "--page-size", "0"]) == 2
    assert "page_size" in capsys.readouterr().err
    own = urlsplit_port(env.engine.database_url)
    assert manage.main(["sugo-allow", name, "--broker", own]) == 0
    assert manage.main(["druid-backend", name, "--brokers", own, "--events", "e"]) == 2
    assert "this service's own stores" in capsys.readouterr().err
    assert manage.main(["druid-backend", name, "--embedded"]) == 0
    with db.connection(database_url) as conn:
        assert projects.backend(conn, project_id) == {"kind": "embedded"}


def urlsplit_port(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}"


def test_webhook_targets_share_the_allowlist(env, project, database_url, capsys):
    from urllib.parse import urlsplit

    name, project_id = project
    assert manage.main(["allow", name, "--webhook", "Hooks.Example.com:443", "--redis", "10.0.0.7:6379/2"]) == 0
    assert manage.main(["targets", name]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["redis 10.0.0.7:6379/2", "webhook hooks.example.com:443"]
    with db.connection(database_url) as conn:
        assert sugo_targets.for_project(conn, project_id, "webhook") == [
            {"kind": "webhook", "host": "hooks.example.com", "port": 443, "db": 0}]
    # Any of the service's own stores (PostgreSQL too, on any loopback alias) is refused as a webhook target.
    for url in (database_url, env.engine.redis_url):
        parts = urlsplit(url)
        assert manage.main(["allow", name, "--webhook", f"localhost:{parts.port}"]) == 2
        assert "own stores" in capsys.readouterr().err
    assert manage.main(["deny", name, "--webhook", "hooks.example.com:443"]) == 0
    assert [t["kind"] for t in targets(database_url, project_id)] == ["redis"]


def _daily_state(database_url, project_id):
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT daily_refresh_time FROM projects WHERE id = %s", (project_id,))
        hhmm = cur.fetchone()[0]
        cur.execute("SELECT name, cron FROM cohorts WHERE project_id = %s ORDER BY name", (project_id,))
        return hhmm, dict(cur.fetchall())


def test_set_refresh_time_moves_the_daily_cohorts_only(env, project, database_url, capsys):
    from core.data import cohorts, projects
    from core.services.cohorts import CohortService

    name, project_id = project
    tree = {"type": "ids", "keys": []}
    with db.connection(database_url) as conn:
        service = CohortService(conn, projects.by_name(conn, name), env)
        service.create("daily", tree, daily_refresh=True)
        cohorts.insert(conn, project_id, "hourly", tree, dynamic=True, cron="0 4 * * *", scheduler_running=True)
    assert _daily_state(database_url, project_id) == ("04:00", {"daily": "0 4 * * *", "hourly": "0 4 * * *"})
    assert manage.main(["set-refresh-time", name, "5:30"]) == 0
    assert "1 daily cohorts moved" in capsys.readouterr().out
    assert _daily_state(database_url, project_id) == ("05:30", {"daily": "30 5 * * *", "hourly": "0 4 * * *"})
    assert manage.main(["set-refresh-time", name, "25:00"]) == 2
    assert "HH:MM" in capsys.readouterr().err
    assert _daily_state(database_url, project_id)[0] == "05:30"


def test_set_app_key_is_unique_across_projects(env, project, database_url, capsys):
    from tests.services import create_token_project

    other, _, _ = create_token_project(database_url)
    key = "ak" + project[0]
    assert manage.main(["set-app-key", project[0], key]) == 0
    assert manage.main(["set-app-key", other, key]) == 2
    assert "belongs to another project" in capsys.readouterr().err
    assert manage.main(["set-app-key", project[0], "bad key!"]) == 2
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT app_key FROM projects WHERE name = %s", (project[0],))
        assert cur.fetchone()[0] == key
    assert manage.main(["set-app-key", project[0], "--clear"]) == 0
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT app_key FROM projects WHERE name = %s", (project[0],))
        assert cur.fetchone()[0] is None


def test_projects_lists_ids_names_zones_and_refresh_times(env, project, capsys):
    name, project_id = project
    assert manage.main(["projects"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{project_id}\t{name}\tUTC\t04:00" in lines and lines[0].startswith("1\tdefault\t")
