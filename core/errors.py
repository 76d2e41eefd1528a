"""Domain errors of the core services; the web layer (app/errors.py) maps each class to a status code."""

from __future__ import annotations


class DomainError(Exception):
    """A refused command: a message a person can act on, and optional {field path: [messages]}."""

    def __init__(self, message: str, errors: dict[str, list[str]] | None = None):
        self.message = message
        self.errors = errors
        super().__init__(message)

    def body(self) -> dict:
        return {"error": self.message, **({"errors": self.errors} if self.errors else {})}


class NotFound(DomainError):
    """The named cohort (or job) is not one of the caller's project."""


class Conflict(DomainError):
    """The command contradicts the current state (a name taken, a cohort still referred to)."""


class DuplicateName(Conflict):
    """Another cohort of the project already has this name."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"a cohort named {name!r} already exists in this project", {"name": ["already exists"]})


class Invalid(DomainError):
    """The input breaks a rule the schemas cannot see; errors names the fields."""

    def __init__(self, errors: dict[str, list[str]], message: str = "invalid input; nothing was written"):
        super().__init__(message, errors)


class Forbidden(DomainError):
    """The caller's credentials do not cover what the command names."""


class Unavailable(DomainError):
    """A service the command needs is down; nothing was written."""
