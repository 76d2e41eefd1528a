"""Outbound addresses: which host:port names are this machine, and which are the service's own stores."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "0.0.0.0", "::"})
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "postgresql": 5432, "postgres": 5432, "http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_host(a: str, b: str) -> bool:
    """Whether two host names reach the same server (every loopback alias of this machine is one host)."""
    return a == b or (is_loopback(a) and is_loopback(b))


def normal_host(host: str) -> str:
    """A host as stored in the allowlist: lower-cased, IPv6 compressed, no brackets (never resolved)."""
    host = host.lower().strip("[]")
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def own_addresses(settings) -> frozenset[tuple[str, int]]:
    """(host, port) of every store the service keeps (each *_url of its settings: PostgreSQL, Redis, broker)."""
    found = set()
    for holder in (settings, settings.engine):
        for name, value in vars(holder).items():
            if not (name.endswith("_url") and isinstance(value, str) and "://" in value):
                continue
            parts = urlsplit(value)
            port = DEFAULT_PORTS.get(parts.scheme)
            if port is None:
                continue
            try:
                port = parts.port or port
            except ValueError:
                continue
            found.add((normal_host(parts.hostname or "127.0.0.1"), port))
    return frozenset(found)


def is_own(own: frozenset[tuple[str, int]], host: str, port: int) -> bool:
    return any(same_host(host, h) and port == p for h, p in own)
