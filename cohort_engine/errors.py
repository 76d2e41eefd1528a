"""The engine's domain error."""

from __future__ import annotations


class EngineError(Exception):
    """A definition that cannot be evaluated against this data; `code` is stable for clients."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")
