"""Outbound HTTP: a pooled requests session over a list of interchangeable endpoints."""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter


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
