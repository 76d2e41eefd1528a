"""A project's rule backend setting: validated, its broker addresses checked against the project's allowlist.

Broker addresses are allowed per project by the same `broker` targets as Sugo's requests
(core/data/sugo_targets.py, `python -m core.manage sugo-allow PROJECT --broker host:port`), so one
allowlist says which brokers a project may make us contact, whichever feature contacts them.
"""

from __future__ import annotations

from cohort_engine.backends.druid.settings import BackendSettingError, DruidSettings, public_backend
from core.data import projects, sugo_targets
from core.errors import Invalid

__all__ = ["BackendSettingError", "check_outbound", "public_backend", "set_druid_backend"]


def _own_addresses(settings) -> set[tuple[str, int]]:
    """(host, port) of the service's own PostgreSQL and Redis servers: never a broker."""
    from urllib.parse import urlsplit

    found = set()
    for holder in (settings, settings.engine):
        for name, value in vars(holder).items():
            if name.endswith("_url") and isinstance(value, str) and "://" in value:
                parts = urlsplit(value)
                if parts.hostname:
                    default = 5432 if parts.scheme.startswith("postgres") else 6379
                    found.add((parts.hostname.lower(), parts.port or default))
    return found


def check_outbound(conn, settings, project_id: int, addresses: list[tuple[str, int]]) -> str | None:
    """Why a project may not contact one of these (host, port) brokers, or None when it may contact them all."""
    allowed = {(r["host"].lower(), r["port"]) for r in sugo_targets.for_project(conn, project_id)
               if r["kind"] == "broker"}
    own = _own_addresses(settings)
    for host, port in addresses:
        if (host, port) in own:
            return f"{host}:{port} is one of this service's own stores (PostgreSQL, Redis), never a Druid broker"
        if (host, port) not in allowed:
            return (f"broker {host}:{port} is not allowed for this project; allow it with python -m core.manage "
                    f"sugo-allow PROJECT --broker {host}:{port}")
    return None


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
