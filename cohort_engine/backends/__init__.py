"""Rule backends: where a project's events and profiles live, behind one protocol, chosen by kind.

A project's `backend` column (`{"kind": "embedded", ...}`) names a registered Backend; the
evaluator (cohort_engine.evaluate) walks the tree and asks the backend's Session for each leaf.
Like Redash's query runners: a backend class registers itself under its kind, and one whose
optional dependency is missing says so with `enabled()` and is refused with a clear error.
See docs/architecture.md.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
from pyroaring import BitMap

from ..errors import EngineError

if TYPE_CHECKING:
    from ..config import EngineConfig
    from ..evaluate import EvalContext

log = logging.getLogger(__name__)

DEFAULT_KIND = "embedded"
# Modules that register a backend when imported; a new backend adds its module here.
BUILTIN_BACKENDS = ("cohort_engine.backends.embedded", "cohort_engine.backends.druid")


@dataclass
class UserValues:
    """Per-user values from a backend: unique ascending uint32 uids and aligned values (Session.user_values)."""

    value_type: str
    uids: np.ndarray
    values: np.ndarray

    def __post_init__(self):
        if len(self.uids) != len(self.values):
            raise ValueError("uids and values must have the same length")


@dataclass(frozen=True)
class ProjectInfo:
    """What a backend is told about its project: identity, time zone and the `backend` column."""

    id: int
    name: str
    timezone: str
    backend: dict = field(default_factory=lambda: {"kind": DEFAULT_KIND})

    @property
    def kind(self) -> str:
        return str(self.backend.get("kind") or DEFAULT_KIND)


class Session(Protocol):
    """One consistent view of a project's data for one or more evaluations; leaf methods return uids."""

    def universe(self) -> BitMap:
        """Every known user (the complement of a `not` is taken within it)."""

    def columns(self) -> dict[str, dict[str, str]]:
        """{"event": {property: kind}, "profile": {property: kind}}, kind string|number|boolean|time."""

    def profile(self, leaf: dict, ctx: EvalContext) -> BitMap: ...

    def event(self, leaf: dict, ctx: EvalContext) -> BitMap: ...

    def sequence(self, leaf: dict, ctx: EvalContext) -> BitMap: ...

    def match_profile(self, column: str, values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The users whose profile property `column` equals one of values (ID imports, docs/imports.md).

        values are distinct strings. Returns two aligned arrays, (index into values as int64, uid as
        uint32), one pair per matching user: a value may match several users, a user matches at most
        one value (its property has one value). A string property compares as text, exactly; a number
        property compares numerically with each value read as a number (values that are not numbers
        match nobody). The caller checks that column is a string or number profile property.
        """

    def register_keys(self, keys: Sequence[str]) -> None:
        """Make sure the users among keys that the backend holds have ids in the project's dictionary.

        Called before IDs are matched on the user key (docs/imports.md). The embedded store's users
        are all in the dictionary (ingest encodes them): nothing to do. A remote backend learns keys
        only from its answers, so it asks for these keys and encodes the ones it has.
        """

    def user_values(self, spec: dict, ctx: EvalContext) -> UserValues:
        """Per-user values of a metric or first_last tag (docs/definition.md "Tags"), one query.

        spec is a parsed tag definition (cohort_engine.tag_definition) of kind:
        - "metric": {event, filter?, agg, window}: the event leaf's aggregate (same rows, same
          functions, same window) for each user with at least one matching row, as float64. A user
          whose aggregate is null (avg/min/max over no non-null value) is left out. Users without a
          matching row are left out too: the engine adds the zeros of count/count_distinct/sum/days.
        - "first_last": {which, event, filter?, window, property}: for each user with at least one
          matching row whose `property` (a property, or the built-in `time` / `event`) is not null,
          the property's value on the row that is smallest ("first") or largest ("last") by
          (time, value): ties in time are broken by the value, so the answer is deterministic.
        The answer's uids are unique and ascending; values align with them, typed by value_type:
        number float64, time int64 microseconds since the epoch (UTC), boolean bool, string object
        (str). value_type is the column's kind (first_last) or "number" (metric). Errors as for
        leaves: EngineError unknown_property, type_mismatch (sum of a string), backend_error.
        """

    def snapshot_id(self) -> str | None:
        """A name for the data this session reads, equal only for sessions whose every answer is equal, or None.

        Optional. Leaf answers are cached across evaluations (cohort_engine.leafcache) under it, so
        it must change with any change to the data a leaf can see (events, profiles, the universe).
        A backend that cannot name its data so returns None (or lacks the method): no reuse across
        evaluations, only within one.
        """

    def close(self) -> None: ...


class Backend(ABC):
    """One project's rule data source; open() gives a Session to evaluate against."""

    kind: ClassVar[str] = ""

    def __init__(self, project: ProjectInfo, config: EngineConfig):
        self.project = project
        self.config = config

    @classmethod
    def enabled(cls) -> bool:
        """False when an optional dependency of the backend is not installed."""
        return True

    def outbound(self) -> list[tuple[str, int]]:
        """(host, port) of every remote address the backend contacts; the caller checks them before open()."""
        return []

    @abstractmethod
    def open(self) -> Session:
        """A Session over the data as it is now; the caller closes it."""


Factory = Callable[[ProjectInfo, "EngineConfig"], Backend]
_registry: dict[str, type[Backend] | Factory] = {}
_imported = False


def register(kind: str, factory) -> None:
    """Make a backend class (or factory(project, config) -> Backend) available under kind."""
    enabled = getattr(factory, "enabled", lambda: True)
    if not enabled():
        log.info("backend disabled kind=%s reason=missing_dependency", kind)
        return
    _registry[kind] = factory


def _import_builtins() -> None:
    global _imported
    if not _imported:
        _imported = True
        for module in BUILTIN_BACKENDS:
            importlib.import_module(module)


def registered() -> list[str]:
    """The kinds of the enabled backends."""
    _import_builtins()
    return sorted(_registry)


def get(kind: str):
    """The factory registered under kind; EngineError `unsupported` for an unknown or disabled kind."""
    _import_builtins()
    factory = _registry.get(kind)
    if factory is None:
        known = ", ".join(sorted(_registry)) or "none"
        raise EngineError("unsupported", f"backend kind {kind!r} is not available (available: {known})")
    return factory


def open_backend(project: ProjectInfo, config: EngineConfig) -> Backend:
    """The backend of a project, by its `backend` column's kind."""
    return get(project.kind)(project, config)
