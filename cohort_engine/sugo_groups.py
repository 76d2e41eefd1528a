"""Sugo user groups in Redis, byte for byte as Sugo's Java service (`/ant`) writes and reads them.

A group is a Redis LIST of binary chunks of at most 1 MiB; the chunks joined are the UTF-8 text
"<count>\\t<id1>\\t<id2>\\t...\\t". Chunks are cut at fixed byte offsets, so a boundary may fall
inside an id or even inside a multi-byte character: readers join the bytes before decoding.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

CHUNK_BYTES = 1_048_576
# Ids are encoded this many at a time, so a writer never holds a second full copy of a huge group.
ENCODE_BATCH = 200_000
# A temporary list left behind by a crashed writer disappears by itself after this long.
TEMP_KEY_TTL_SECONDS = 3600
READ_BATCH_CHUNKS = 64


class SugoGroupFormatError(ValueError):
    """Bytes or ids that are not a valid Sugo user group."""


def parse(data: bytes | bytearray | memoryview) -> list[str]:
    """The ids of a group from its joined bytes (empty bytes: an empty group)."""
    if not data:
        return []
    try:
        text = (data if isinstance(data, bytes) else bytes(data)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SugoGroupFormatError(f"user group is not UTF-8 text: {exc}") from None
    head, tab, rest = text.partition("\t")
    if not tab or (rest and not rest.endswith("\t")):
        raise SugoGroupFormatError("user group text must be '<count>\\t' followed by ids each ending in a tab")
    try:
        count = int(head)
    except ValueError:
        raise SugoGroupFormatError(f"user group count {head[:40]!r} is not a number") from None
    ids = rest.split("\t") if rest else [""]
    ids.pop()
    if count != len(ids):
        raise SugoGroupFormatError(f"user group says it holds {count} ids but holds {len(ids)}")
    return ids


def _encoded_pieces(keys: Sequence[str]):
    """The group's UTF-8 bytes in pieces of about ENCODE_BATCH ids, validating each id."""
    yield f"{len(keys)}\t".encode()
    for start in range(0, len(keys), ENCODE_BATCH):
        batch = keys[start:start + ENCODE_BATCH]
        try:
            text = "\t".join(batch)
        except TypeError:
            bad = next(k for k in batch if not isinstance(k, str))
            raise SugoGroupFormatError(f"user group id {bad!r} is not a string") from None
        # A tab inside an id would shift every id after it, so refuse rather than corrupt.
        if text.count("\t") != len(batch) - 1 or "" in batch:
            bad = next(k for k in batch if "\t" in k or k == "")
            raise SugoGroupFormatError(f"user group id {bad!r} is empty or contains a tab")
        yield text.encode("utf-8") + b"\t"


def _chunks(keys: Sequence[str]):
    """Fixed CHUNK_BYTES pieces of the group's bytes, cut without regard to ids or characters."""
    pending = bytearray()
    for piece in _encoded_pieces(keys):
        pending += piece
        if len(pending) >= CHUNK_BYTES:
            whole = len(pending) - len(pending) % CHUNK_BYTES
            view = memoryview(pending)
            for offset in range(0, whole, CHUNK_BYTES):
                yield bytes(view[offset:offset + CHUNK_BYTES])
            view.release()
            del pending[:whole]
    if pending:
        yield bytes(pending)


def encode(keys: Sequence[str]) -> list[bytes]:
    """The chunks of a group holding keys, in order (an empty group is the single chunk b"0\\t")."""
    return list(_chunks(keys))


def read_group(redis, key: str) -> list[str]:
    """The ids of the group stored under key (a missing key is an empty group)."""
    kind = redis.type(key)
    if kind in (b"none", "none"):
        return []
    if kind not in (b"list", "list"):
        raise SugoGroupFormatError(f"Redis key {key!r} holds a {kind!r}, not a user group list")
    parts = []
    start = 0
    while True:
        batch = redis.lrange(key, start, start + READ_BATCH_CHUNKS - 1)
        parts.extend(batch)
        if len(batch) < READ_BATCH_CHUNKS:
            break
        start += READ_BATCH_CHUNKS
    try:
        return parse(b"".join(parts))
    except SugoGroupFormatError as exc:
        raise SugoGroupFormatError(f"Redis key {key!r}: {exc}") from None


def write_group(redis, key: str, keys: Sequence[str]) -> int:
    """Replace the group under key with keys (caller's order, duplicates dropped); return the count.

    The chunks go to a temporary key that is RENAMEd over key at the end, so readers see the old
    group or the new one, whole, and a failure midway leaves the old group in place.
    """
    distinct = list(dict.fromkeys(keys))
    tmp = f"{key}:tmp:{uuid.uuid4().hex}"
    try:
        pushed = 0
        pipe = redis.pipeline(transaction=False)
        for chunk in _chunks(distinct):
            pipe.rpush(tmp, chunk)
            pushed += 1
            if pushed % 16 == 0:
                pipe.execute()
        pipe.expire(tmp, TEMP_KEY_TTL_SECONDS)
        pipe.execute()
        # RENAME keeps the temporary key's TTL, so clear it in the same transaction.
        swap = redis.pipeline(transaction=True)
        swap.rename(tmp, key)
        swap.persist(key)
        swap.execute()
    except BaseException:
        redis.delete(tmp)
        raise
    return len(distinct)
