"""Roaring bitmaps: building them from id arrays, and storing cohort versions in Redis."""

from __future__ import annotations

import array
import uuid

import numpy as np
from pyroaring import BitMap


def to_bitmap(ids) -> BitMap:
    """A BitMap from a numpy array of uint32 ids (sorting first is the fast path in pyroaring)."""
    ids = np.asarray(ids, dtype=np.uint32)
    # Ids read in stored order are often sorted already (profiles are stored by uid): checking
    # costs a tenth of sorting them again (6.5M ids: 232 vs 363 ms for the whole bitmap).
    if len(ids) > 1 and not bool(np.all(ids[1:] >= ids[:-1])):
        ids = np.sort(ids)
    buffer = array.array("I")
    buffer.frombytes(ids.tobytes())
    bitmap = BitMap()
    bitmap.update(buffer)
    return bitmap


def cohort_key(prefix: str, project_id: int, cohort_id: int, version: int | None = None) -> str:
    """The Redis key of a cohort's latest bitmap, or of one version of it."""
    base = f"{prefix}:p{project_id}:cohort:{cohort_id}"
    return base if version is None else f"{base}:v{version}"


def publish(redis, key: str, bitmap: BitMap, also: tuple[str, ...] = (), payload: bytes | None = None) -> bytes:
    """Store bitmap under key (and any `also` keys) atomically: readers see the old or the new, whole.

    Returns the serialized bitmap (pass it back as payload to skip serializing the same bitmap again).
    """
    payload = bitmap.serialize() if payload is None else payload
    for target in (key, *also):
        tmp = f"{target}:tmp:{uuid.uuid4().hex}"
        pipe = redis.pipeline(transaction=True)
        pipe.set(tmp, payload)
        pipe.rename(tmp, target)
        pipe.execute()
    return payload


def store(redis, keys: list[str], payload: bytes) -> None:
    """Set every key to payload in one round trip (a SET is atomic: readers see the old or the new, whole)."""
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, payload)
    pipe.execute()


def load(redis, key: str) -> BitMap | None:
    """The bitmap stored under key, or None."""
    payload = redis.get(key)
    return None if payload is None else BitMap.deserialize(payload)


def load_cached(redis, key: str, durable) -> BitMap | None:
    """The bitmap under key; on a miss, the durable copy from durable() (bytes or None), put back in Redis.

    Redis is a cache of the published bitmaps (they are lost with a restart of a Redis without
    persistence). The refill only sets a missing key (NX): a publisher's newer bitmap is never replaced.
    """
    payload = load_cached_payload(redis, key, durable)
    return None if payload is None else BitMap.deserialize(payload)


def load_cached_payload(redis, key: str, durable) -> bytes | None:
    """The bytes under key, refilled from durable() on a miss as load_cached does (tag versions use it too)."""
    payload = redis.get(key)
    if payload is None:
        payload = durable()
        if payload is None:
            return None
        redis.set(key, payload, nx=True)
    return payload


def is_member(redis, key: str, uid: int | None) -> bool:
    """Whether uid is in the bitmap under key."""
    if uid is None:
        return False
    bitmap = load(redis, key)
    return bitmap is not None and uid in bitmap


def iter_members(bitmap: BitMap, dictionary, batch: int = 20000):
    """Stream the user keys of a bitmap, decoded in batches."""
    for start in range(0, len(bitmap), batch):
        chunk = bitmap[start:start + batch]
        yield from (k for k in dictionary.decode(list(chunk)) if k is not None)


_clients: dict[tuple[int, str], object] = {}


def redis_client(url: str):
    """A Redis client for url shared within this process (a forked worker gets its own)."""
    import os

    import redis as redis_lib

    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = redis_lib.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
    return client
