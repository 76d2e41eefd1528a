"""Leaf results kept for reuse: the key of a leaf (windows resolved) and a bytes-bounded LRU of frozen bitmaps.

A leaf's answer is a function of the leaf, the evaluation's zone and base time, and the backend's
data. `leaf_key` writes the first three as one string in which every part relative to the base time
is resolved to absolute UTC bounds, so `last 7 days` computed on two days with the same bounds, or
next to the same window written as dates, is one key. The data is named by the session's
`snapshot_id()`; a backend that cannot name it returns None and gets no reuse across evaluations.
See docs/store.md "Leaf-result cache".
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from datetime import datetime
from zoneinfo import ZoneInfo

from pyroaring import AbstractBitMap, FrozenBitMap

from .timewin import duration_before, resolve_window, to_utc_naive

# About what a key's tuple, the OrderedDict node and the bitmap object cost beyond their payloads.
ENTRY_OVERHEAD_BYTES = 256
DEFAULT_MAX_BYTES = 64 * 2**20


def leaf_key(leaf: dict, tz: ZoneInfo, base_time: datetime) -> str:
    """Canonical JSON of a leaf in its evaluation's frame: zone, and every relative time resolved."""
    return json.dumps({"tz": str(tz), "leaf": _resolved(leaf, tz, base_time)},
                      sort_keys=True, separators=(",", ":"), default=_typed)


def _resolved(node, tz: ZoneInfo, base_time: datetime):
    if isinstance(node, list):
        return [_resolved(v, tz, base_time) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for name, value in node.items():
        if name == "window" and isinstance(value, dict):
            start, end = resolve_window(value, base_time, tz)
            out[name] = {"from": start.isoformat(), "to": end.isoformat()}
        else:
            out[name] = _resolved(value, tz, base_time)
    # Durations count back from the base time: the bounds they stand for are the key, not (n, unit).
    if node.get("cmp") == "within_last":
        n, unit = node["values"]
        out["values"] = {"from": duration_before(base_time, n, unit, tz).isoformat(),
                         "through": to_utc_naive(base_time).isoformat()}
    elif node.get("cmp") == "before_last":
        n, unit = node["values"]
        out["values"] = {"before": duration_before(base_time, n, unit, tz).isoformat()}
    return out


def _typed(value):
    # Only JSON types come from a parsed definition; anything else keeps its type in the key, so a
    # datetime never shares a key with the string it prints as.
    return {"$type": type(value).__name__, "repr": repr(value)}


def entry_bytes(key, bitmap: AbstractBitMap) -> int:
    """What an entry is charged: its serialized size (close to its size in memory), its key and overhead."""
    return len(bitmap.serialize()) + len(repr(key)) + ENTRY_OVERHEAD_BYTES


class LeafCache:
    """A bytes-bounded LRU of leaf bitmaps, stored frozen so no caller can change a cached answer."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[tuple, tuple[FrozenBitMap, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> FrozenBitMap | None:
        """The cached bitmap under key (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: tuple, bitmap: AbstractBitMap) -> FrozenBitMap:
        """Keep a frozen copy of bitmap under key, evicting the least recently used past the bound; return the copy."""
        frozen = bitmap if isinstance(bitmap, FrozenBitMap) else FrozenBitMap(bitmap)
        if not self.enabled:
            return frozen
        size = entry_bytes(key, frozen)
        if size > self.max_bytes:
            return frozen  # one answer larger than the whole cache would only flush it
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._entries[key] = (frozen, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted
                self.evictions += 1
        return frozen

    def bitmaps(self) -> list[FrozenBitMap]:
        """The cached answers, least recently used first."""
        with self._lock:
            return [bitmap for bitmap, _ in self._entries.values()]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def stats(self) -> dict:
        return {"entries": len(self._entries), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions}


_shared: dict[tuple[int, int], LeafCache] = {}
_shared_lock = threading.Lock()


def shared(max_bytes: int) -> LeafCache:
    """This process's cache of that bound (a forked worker starts its own, empty)."""
    key = (os.getpid(), int(max_bytes))
    with _shared_lock:
        cache = _shared.get(key)
        if cache is None:
            # A forked child inherits its parent's caches: drop them rather than keep their memory.
            for stale in [k for k in _shared if k[0] != key[0]]:
                del _shared[stale]
            cache = _shared[key] = LeafCache(max_bytes)
        return cache


def clear_shared() -> None:
    """Empty every cache of this process (benchmarks measuring cold, tests)."""
    with _shared_lock:
        for cache in _shared.values():
            cache.clear()
