"""Outbound HTTP: a pooled requests session over a list of interchangeable endpoints."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter


def endpoint_urls(value: str, name: str, path: Callable[[str], str]) -> list[str]:
    """URLs from a URL or a comma-separated host:port list (http:// by default), each path set by path(given path)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a URL or a comma-separated host:port list")
    endpoints = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        parts = urlsplit(item if "://" in item else "http://" + item)
        if not parts.hostname:
            raise ValueError(f"{name} {item!r} has no host")
        endpoints.append(urlunsplit((parts.scheme, parts.netloc, path(parts.path), parts.query, "")))
    if not endpoints:
        raise ValueError(f"{name} must name at least one host")
    return endpoints


class EndpointsClient:
    """Keeps a pooled session and a rotating position in a list of equivalent endpoint URLs."""

    def __init__(self, endpoints: list[str], *, pool_size: int, session: requests.Session | None = None):
        self.endpoints = endpoints
        self.session = session or requests.Session()
        # Retries are ours (per endpoint, with backoff), never urllib3's.
        adapter = HTTPAdapter(pool_connections=len(endpoints), pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._current = 0

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
