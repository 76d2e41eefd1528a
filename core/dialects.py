"""The dialect registry: vendor APIs as plug-ins, one package each under `dialects/`, enabled by settings.

A dialect package defines `DIALECT = Dialect(...)` in its `__init__.py`; `enabled(settings)` imports
the packages named in `Settings.dialects` (COHORTS_DIALECTS). Parts are named as "module:attribute"
strings, so that the web app imports only the views and the workers only the job handlers.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Dialect:
    """One vendor API: where its web views and its job handlers live."""

    name: str
    # "module:attribute" of the Flask blueprint serving the vendor's paths (imported by the web app only).
    blueprint: str | None = None
    # "module:attribute" of `add_paths(spec, docs)`, its paths in /openapi.json (app/api/docs.py is docs).
    openapi: str | None = None
    # job kind -> "module:attribute" of its handler, `handler(run, job) -> result` (core/jobs/runner.py;
    # imported by the workers only).
    job_handlers: dict[str, str] = field(default_factory=dict)
    # job kind -> the Celery task name its jobs are sent under, for kinds older than the generic
    # `jobs.run` (messages already queued carry that name); other kinds of job_handlers go to `jobs.run`.
    task_names: dict[str, str] = field(default_factory=dict)
    # Its cohorts keep one version per base time (Sensors partitions): each cron fire computes its own
    # partition. Otherwise a cohort keeps one live computation, so refreshes and cron fires coalesce.
    partitioned: bool = False


def load(reference: str):
    """The object a "module:attribute" reference names."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def enabled(settings) -> list[Dialect]:
    """The dialects named in settings.dialects (default, or settings None: dialects.INSTALLED), in order."""
    return list(enabled_by_names(settings.dialects if settings is not None else ""))


@functools.lru_cache(maxsize=8)
def enabled_by_names(names: str) -> tuple[Dialect, ...]:
    """The dialects of a COHORTS_DIALECTS value ("" = dialects.INSTALLED), imported once per process."""
    found = []
    names = names or importlib.import_module("dialects").INSTALLED
    for name in (part.strip() for part in names.split(",")):
        if name:
            module = importlib.import_module(name if "." in name else f"dialects.{name}")
            found.append(module.DIALECT)
    return tuple(found)
