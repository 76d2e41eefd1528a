"""Sugo user groups in Redis, byte for byte as Sugo's Java service (`/ant`) writes and reads them.

A group is a Redis LIST of binary chunks of at most 1 MiB; the chunks joined are the UTF-8 text
"<count>\\t<id1>\\t<id2>\\t...\\t". Chunks are cut at fixed byte offsets, so a boundary may fall
inside an id or even inside a multi-byte character: readers join the bytes before decoding.
"""

from __future__ import annotations

import time
import uuid
from binascii import crc_hqx
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
CHUNK_BYTES = 1_048_576
# Ids are encoded this many at a time, so a writer never holds a second full copy of a huge group.
ENCODE_BATCH = 200_000
# A temporary list left behind by a crashed writer disappears by itself after this long.
TEMP_KEY_TTL_SECONDS = 3600
CLUSTER_SLOTS = 16384
_SWAP_SCRIPT = "redis.call('RENAME', KEYS[1], KEYS[2]) redis.call('PERSIST', KEYS[2]) return 1"
# The swap of a locked writer: only while it still holds the group's lock (KEYS[3] = its token).
_SWAP_IF_LOCKED_SCRIPT = ("if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end "
                          "redis.call('RENAME', KEYS[1], KEYS[2]) redis.call('PERSIST', KEYS[2]) return 1")
_RELEASE_SCRIPT = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# A group's writer lock outlives a crashed holder by this much; a holder slower than this loses
# the lock and its swap is refused (the job fails) rather than overwrite a later writer's ids.
LOCK_TTL_SECONDS = 600
LOCK_WAIT_SECONDS = 600


class SugoGroupFormatError(ValueError):
    """Bytes or ids that are not a valid Sugo user group."""


class GroupLockError(RuntimeError):
    """A group's writer lock could not be taken in time, or was lost before the swap (nothing was written)."""


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
    ids = rest.split("\t") if rest else [""]
    ids.pop()
    check_count(head, len(ids))
    return ids


def check_count(head: str, found: int) -> None:
    """Refuse a count text that is not a number or not the number of ids found."""
    try:
        count = int(head)
    except ValueError:
        raise SugoGroupFormatError(f"user group count {head[:40]!r} is not a number") from None
    if count != found:
        raise SugoGroupFormatError(f"user group says it holds {count} ids but holds {found}")


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
    return _cut(_encoded_pieces(keys))


def _cut(pieces: Iterable[bytes]):
    """The bytes of pieces joined, in fixed CHUNK_BYTES chunks (the last one shorter)."""
    pending = bytearray()
    for piece in pieces:
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
    return read_parsed(redis, key, parse)


def read_parsed(redis, key: str, parser: Callable[[bytes], T]) -> T:
    """parser(the joined bytes of the group under key; b"" if missing), its format errors naming key."""
    # One MULTI, so a writer's RENAME cannot fall between reading the type and the chunks, or
    # between two chunk ranges (also in Redis Cluster: one key, one slot).
    pipe = redis.pipeline(transaction=True)
    pipe.type(key)
    pipe.lrange(key, 0, -1)
    kind, parts = pipe.execute(raise_on_error=False)
    if kind in (b"none", "none"):
        return parser(b"")
    if kind not in (b"list", "list"):
        raise SugoGroupFormatError(f"Redis key {key!r} holds a {kind!r}, not a user group list")
    if isinstance(parts, Exception):
        raise parts
    try:
        return parser(b"".join(parts))
    except SugoGroupFormatError as exc:
        raise SugoGroupFormatError(f"Redis key {key!r}: {exc}") from None


def cluster_slot(key: str) -> int:
    """The Redis Cluster slot of key: CRC16 of its hash tag (first non-empty {...}) or of all of it."""
    data = key.encode("utf-8")
    tag = _hash_tag(data)
    return crc_hqx(data if tag is None else tag, 0) % CLUSTER_SLOTS


def _hash_tag(data: bytes) -> bytes | None:
    start = data.find(b"{")
    if start < 0:
        return None
    end = data.find(b"}", start + 1)
    if end < 0 or end == start + 1:
        return None
    return data[start + 1:end]


_slot_tags: dict[int, str] = {}


def _brace_free_tag_for_slot(slot: int) -> str:
    """A short text without braces whose CRC16 falls in slot (about 16K tries, once per slot)."""
    tag = _slot_tags.get(slot)
    if tag is None:
        candidate = 0
        while crc_hqx(f"s{candidate}".encode(), 0) % CLUSTER_SLOTS != slot:
            candidate += 1
        tag = _slot_tags[slot] = f"s{candidate}"
    return tag


def temp_key_for(key: str, unique: str) -> str:
    """A temporary key in key's Redis Cluster slot, so the final RENAME is allowed in a cluster.

    Starts with "<key>:tmp:" whenever the hash-tag rules allow it, so leftovers are easy to find.
    """
    return _sibling_key(key, "tmp", unique)


def lock_key_for(key: str) -> str:
    """The writer lock of a group, in the group's slot, so one script can check it and swap."""
    return _sibling_key(key, "lock", "owner")


def _sibling_key(key: str, role: str, unique: str) -> str:
    data = key.encode("utf-8")
    if _hash_tag(data) is not None:
        # Text after the key cannot move its (first) hash tag.
        return f"{key}:{role}:{unique}"
    # Without a tag the slot is the CRC of the whole key, so a tag whose content is exactly the key
    # (or, when the key holds a '}' that would end such a tag early, other text of the same slot).
    tag = key if "}" not in key and key else _brace_free_tag_for_slot(cluster_slot(key))
    if "{" in key:
        # The key's own '{' would open the first tag, so ours must come before it.
        return f"{{{tag}}}:{role}:{key}:{unique}"
    return f"{key}:{role}:{{{tag}}}:{unique}"


@contextmanager
def group_lock(redis, key: str, ttl: float = LOCK_TTL_SECONDS, wait: float = LOCK_WAIT_SECONDS
               ) -> Iterator[tuple[str, str]]:
    """Hold the writer lock of the group under key: (lock key, token) to pass to write_group.

    A SET NX PX of one key, so it works alike on a standalone Redis, a Sentinel's master and a
    Redis Cluster; released by a script that deletes it only if it is still ours.
    """
    lock, token = lock_key_for(key), uuid.uuid4().hex
    deadline = time.monotonic() + wait
    pause = 0.005
    while not redis.set(lock, token, nx=True, px=int(ttl * 1000)):
        if time.monotonic() >= deadline:
            raise GroupLockError(f"user group {key!r} stayed locked by another writer for {wait:.0f}s")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)
    try:
        yield lock, token
    finally:
        redis.eval(_RELEASE_SCRIPT, 1, lock, token)


def write_group(redis, key: str, keys: Sequence[str], lock: tuple[str, str] | None = None) -> int:
    """Replace the group under key with keys (caller's order, duplicates dropped); return the count.

    The chunks go to a temporary key that is RENAMEd over key at the end, so readers see the old
    group or the new one, whole, and a failure midway leaves the old group in place. With `lock`
    (from group_lock) the rename happens only while that lock is still held.
    """
    distinct = list(dict.fromkeys(keys))
    _write_chunks(redis, key, _chunks(distinct), lock)
    return len(distinct)


def write_raw(redis, key: str, pieces: Iterable[bytes], lock: tuple[str, str] | None = None) -> None:
    """write_group for a group's text already encoded (in pieces of any size), swapped in the same way."""
    _write_chunks(redis, key, _cut(pieces), lock)


def _write_chunks(redis, key: str, chunks: Iterable[bytes], lock: tuple[str, str] | None) -> None:
    tmp = temp_key_for(key, uuid.uuid4().hex)
    try:
        pushed = 0
        pipe = redis.pipeline(transaction=False)
        for chunk in chunks:
            pipe.rpush(tmp, chunk)
            if pushed == 0:
                # With the first chunk, so a writer that dies midway leaves nothing behind for long.
                pipe.expire(tmp, TEMP_KEY_TTL_SECONDS)
            pushed += 1
            if pushed % 16 == 0:
                pipe.execute()
        pipe.execute()
        # RENAME keeps the temporary key's TTL, so clear it atomically with the swap. A script, not
        # MULTI: redis-py's cluster pipeline refuses RENAME, and a script runs in Redis Cluster too
        # because both keys share a slot (see temp_key_for).
        if lock is None:
            redis.eval(_SWAP_SCRIPT, 2, tmp, key)
        elif not redis.eval(_SWAP_IF_LOCKED_SCRIPT, 3, tmp, key, lock[0], lock[1]):
            raise GroupLockError(f"user group {key!r}: the writer lock expired before the write ended; "
                                 "nothing was written")
    except BaseException:
        redis.delete(tmp)
        raise


def delete_groups(redis, keys: Iterable[str]) -> int:
    """Delete the groups under keys (one DEL per key, so keys may lie in different cluster slots)."""
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.delete(key)
    return sum(pipe.execute())


def update_group(redis, key: str, compute: Callable[[list[str] | None], Sequence[str]], *, read: bool = True) -> int:
    """Replace the group under key with compute(its ids now) (compute(None) if not read); return the count.

    Read, compute and swap happen under the group's writer lock, so two concurrent appends to one
    group never lose each other's ids (an unlocked read-union-write keeps only the last one's).
    """
    with group_lock(redis, key) as lock:
        current = read_group(redis, key) if read else None
        return write_group(redis, key, compute(current), lock=lock)


def update_group_raw(redis, key: str, compute: Callable[[T | None], Iterable[bytes]], parser: Callable[[bytes], T],
                     *, read: bool = True) -> None:
    """update_group on a group's text: compute(parser(its bytes now), or None) returns the new text in pieces."""
    with group_lock(redis, key) as lock:
        current = read_parsed(redis, key, parser) if read else None
        write_raw(redis, key, compute(current), lock=lock)
