"""The dialect registry: vendor APIs as plug-ins, one package each under `dialects/`, enabled by settings.

A dialect package defines `DIALECT = Dialect(...)` in its `__init__.py`; `enabled(settings)` imports
the packages named in `Settings.dialects` (COHORTS_DIALECTS). Parts are named as "module:attribute"
strings, so that the web app imports only the views and the workers only the job handlers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Dialect:
    """One vendor API: where its web views and its job handlers live."""

    name: str
    # "module:attribute" of the Flask blueprint serving the vendor's paths (imported by the web app only).
    blueprint: str | None = None
    # job kind -> "module:attribute" of its handler (imported by the workers only).
    job_handlers: dict[str, str] = field(default_factory=dict)


def load(reference: str):
    """The object a "module:attribute" reference names."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def enabled(settings) -> list[Dialect]:
    """The dialects named in settings.dialects (default: dialects.INSTALLED), in order."""
    found = []
    names = settings.dialects or importlib.import_module("dialects").INSTALLED
    for name in (part.strip() for part in names.split(",")):
        if name:
            module = importlib.import_module(name if "." in name else f"dialects.{name}")
            found.append(module.DIALECT)
    return found
