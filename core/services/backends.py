"""A project's rule backend setting: validated, its broker addresses checked against the project's allowlist.

Broker addresses are allowed per project by the same `broker` targets as Sugo's requests
(core/data/sugo_targets.py, `python -m core.manage sugo-allow PROJECT --broker host:port`), so one
allowlist says which brokers a project may make us contact, whichever feature contacts them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cohort_engine.backends.druid.settings import BackendSettingError, DruidSettings, public_backend
from cohort_engine.errors import EngineError
from core import addresses
from core.data import projects, sugo_targets
from core.errors import Conflict, Invalid, Unavailable

__all__ = ["BackendSettingError", "backend_session", "check_outbound", "outbound_problem", "public_backend",
           "set_druid_backend"]

# Engine error codes of a backend that failed (not of the request): a web request answers 503 for them.
BACKEND_FAILURES = ("backend_error", "backend_timeout", "backend_unavailable", "backend_config")


def check_outbound(conn, settings, project_id: int, targets: list[tuple[str, int]]) -> str | None:
    """Why a project may not contact one of these (host, port) brokers, or None when it may contact them all."""
    allowed = {(addresses.normal_host(r["host"]), r["port"]) for r in sugo_targets.for_project(conn, project_id, "broker")}
    own = addresses.own_addresses(settings)
    for host, port in targets:
        host = addresses.normal_host(host)
        if addresses.is_own(own, host, port):
            return f"{host}:{port} is one of this service's own stores (PostgreSQL, Redis), never a Druid broker"
        if (host, port) not in allowed:
            return (f"broker {host}:{port} is not allowed for this project; allow it with python -m core.manage "
                    f"sugo-allow PROJECT --broker {host}:{port}")
    return None


def outbound_problem(conn, settings, engine) -> str | None:
    """Why the engine's backend may not contact its remote addresses now (None: it may, or it has none)."""
    outbound = engine.backend.outbound()
    return check_outbound(conn, settings, engine.project_id, outbound) if outbound else None


@contextmanager
def backend_session(conn, settings, engine) -> Iterator:
    """The project's backend Session for a web request (closed after), its brokers checked first.

    Conflict when a broker is no longer allowed (nothing contacted); a backend that fails (down,
    timeout, refused query) is Unavailable, so the request answers 503 naming it, never 500.
    """
    problem = outbound_problem(conn, settings, engine)
    if problem:
        raise Conflict(f"the project's backend cannot be used: {problem}; nothing was contacted")
    session = engine.open_session()
    try:
        yield session
    except EngineError as exc:
        if exc.code in BACKEND_FAILURES:
            raise Unavailable(f"the project's backend failed: {exc.message}") from None
        raise
    finally:
        session.close()


def set_druid_backend(conn, settings, project_id: int, value: dict) -> dict:
    """Validate and store a `druid` backend setting; Invalid naming the field (nothing written) when it cannot be used."""
    try:
        parsed = DruidSettings.parse(value)
    except BackendSettingError as exc:
        raise Invalid({exc.field: [str(exc).split(": ", 1)[-1]]}) from None
    problem = check_outbound(conn, settings, project_id, parsed.addresses())
    if problem:
        raise Invalid({"brokers": [problem]})
    projects.set_backend(conn, project_id, value)
    return parsed.public()
