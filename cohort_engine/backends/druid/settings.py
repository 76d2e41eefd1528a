"""The `druid` backend setting of a project (its `backend` column): where the events and profiles live in Druid."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ...druid.client import broker_endpoints

KINDS = ("string", "number", "boolean", "time")
TABLES = ("events", "profiles")
DEFAULT_TIMEOUT_MS = 60_000
DEFAULT_PAGE_SIZE = 500_000
MAX_PAGE_SIZE = 5_000_000
SECRET = "password"
FIELDS = ("kind", "brokers", "events", "profiles", "user_key", "event_name", "time_column", "columns", "username",
          "password", "timeout_ms", "page_size")


class BackendSettingError(ValueError):
    """A `druid` backend setting that cannot be used; `field` names the offending field."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


@dataclass(frozen=True)
class Column:
    """How one canonical property is read: its Druid column and, when Druid's type cannot tell, its kind."""

    column: str
    kind: str | None = None


@dataclass(frozen=True)
class DruidSettings:
    brokers: str
    events: str
    profiles: str | None = None
    user_key: str = "distinct_id"
    event_name: str = "event"
    time_column: str = "__time"
    columns: dict[str, dict[str, Column]] = field(default_factory=lambda: {"events": {}, "profiles": {}})
    username: str | None = None
    password: str | None = None
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    page_size: int = DEFAULT_PAGE_SIZE

    @classmethod
    def parse(cls, raw: dict) -> DruidSettings:
        """The settings of a `{"kind": "druid", ...}` backend value; BackendSettingError naming a bad field."""
        if not isinstance(raw, dict):
            raise BackendSettingError("backend", "must be an object")
        unknown = sorted(set(raw) - set(FIELDS))
        if unknown:
            raise BackendSettingError(unknown[0], f"unknown field (known: {', '.join(FIELDS)})")
        brokers = _text(raw, "brokers", required=True)
        try:
            broker_endpoints(brokers)
        except ValueError as exc:
            raise BackendSettingError("brokers", str(exc)) from None
        columns = {table: _columns(raw.get("columns") or {}, table) for table in TABLES}
        extra = sorted(set(raw.get("columns") or {}) - set(TABLES))
        if extra:
            raise BackendSettingError(f"columns.{extra[0]}", "must be events or profiles")
        username, password = _text(raw, "username"), _text(raw, "password")
        if (username is None) != (password is None):
            raise BackendSettingError("password" if username else "username",
                                      "basic auth needs both username and password")
        return cls(brokers=brokers, events=_text(raw, "events", required=True), profiles=_text(raw, "profiles"),
                   user_key=_text(raw, "user_key") or "distinct_id", event_name=_text(raw, "event_name") or "event",
                   time_column=_text(raw, "time_column") or "__time", columns=columns, username=username,
                   password=password, timeout_ms=_int(raw, "timeout_ms", DEFAULT_TIMEOUT_MS, 100, 3_600_000),
                   page_size=_int(raw, "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE))

    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every broker, as the allowlist names them (host lower-case, default ports 80/443)."""
        found = []
        for url in broker_endpoints(self.brokers):
            parts = urlsplit(url)
            found.append((parts.hostname.lower(), parts.port or (443 if parts.scheme == "https" else 80)))
        return found

    def public(self) -> dict:
        """The setting as stored, without the password (whether one is set is shown)."""
        shown = {"kind": "druid", "brokers": self.brokers, "events": self.events, "profiles": self.profiles,
                 "user_key": self.user_key, "event_name": self.event_name, "time_column": self.time_column,
                 "columns": {t: {p: {"column": c.column, "kind": c.kind} for p, c in cols.items()}
                             for t, cols in self.columns.items()},
                 "username": self.username, "password_set": self.password is not None,
                 "timeout_ms": self.timeout_ms, "page_size": self.page_size}
        return shown


def public_backend(backend: dict | None) -> dict:
    """A project's `backend` value fit to show: secrets removed, whatever its kind."""
    backend = dict(backend or {"kind": "embedded"})
    if backend.get("kind") == "druid":
        try:
            return DruidSettings.parse(backend).public()
        except BackendSettingError as exc:
            return {"kind": "druid", "error": str(exc)}
    backend.pop(SECRET, None)
    return backend


def _text(raw: dict, name: str, required: bool = False) -> str | None:
    value = raw.get(name)
    if value is None:
        if required:
            raise BackendSettingError(name, "is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise BackendSettingError(name, "must be a non-empty string")
    return value.strip()


def _int(raw: dict, name: str, default: int, low: int, high: int) -> int:
    value = raw.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BackendSettingError(name, f"must be an integer from {low} to {high}")
    return value


def _columns(raw: dict, table: str) -> dict[str, Column]:
    if not isinstance(raw, dict):
        raise BackendSettingError("columns", "must be an object {events: {...}, profiles: {...}}")
    spec = raw.get(table) or {}
    if not isinstance(spec, dict):
        raise BackendSettingError(f"columns.{table}", "must be an object {property: kind or {column, kind}}")
    found = {}
    for prop, value in spec.items():
        path = f"columns.{table}.{prop}"
        if isinstance(value, str):
            value = {"kind": value}
        if not isinstance(value, dict) or set(value) - {"column", "kind"}:
            raise BackendSettingError(path, "must be a kind or {\"column\": name, \"kind\": kind}")
        kind = value.get("kind")
        if kind is not None and kind not in KINDS:
            raise BackendSettingError(f"{path}.kind", f"must be one of {', '.join(KINDS)}")
        column = value.get("column", prop)
        if not isinstance(column, str) or not column:
            raise BackendSettingError(f"{path}.column", "must be a non-empty string")
        found[prop] = Column(column, kind)
    return found
