"""Per-project user-key dictionary in PostgreSQL: string key <-> dense uint32 id.

Keys are stored in bulk, not one indexed row per key (a text B-tree over millions of rows made a
1M-key encode take ~20 s):
- user_key_blocks: ids block_no*BLOCK_SIZE.. in id order, each key UTF-8 and NUL-terminated, so
  an append is a byte concatenation; it feeds decode and the in-process cache.
- user_key_buckets: the same keys spread over BUCKETS hash buckets with their ids, so one key is
  found by reading one small row without loading the whole dictionary.
Writers serialise on the project's counter row (SELECT ... FOR UPDATE), so ids are dense and
blocks only ever grow at the end. The dictionary is append-only, which makes a per-process cache
safe: it is refreshed by reading the blocks past what it already holds.
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat

import numpy as np
from psycopg2.extensions import TRANSACTION_STATUS_IDLE as _IDLE

MISSING = np.uint32(0xFFFFFFFF)
BLOCK_SIZE = 65536
BUCKETS = 2048
# Below this many keys, and with no cache loaded yet, encode reads hash buckets instead of loading
# the whole dictionary into the process.
CACHE_THRESHOLD = 2000
_COPY_CHUNK = 1 << 20
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)


def _terminated(keys: Sequence[str]) -> tuple[bytes, np.ndarray]:
    """keys as one UTF-8 buffer, each NUL-terminated, and the offset of each terminator."""
    data = ("\x00".join(keys) + "\x00").encode("utf-8")
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0)
    if len(ends) != len(keys):
        bad = next(k for k in keys if "\x00" in k)
        raise ValueError(f"user key {bad!r} contains a NUL character")
    return data, ends


_HASH_MULTIPLIER = np.uint64(1_000_003)
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_HASHED_BYTES = 12


def _buckets(data: bytes, ends: np.ndarray) -> np.ndarray:
    """Hash bucket of each NUL-terminated key in data, the same in every process.

    Only the length and the first and last _HASHED_BYTES bytes are hashed: vectorised over a
    million keys that costs a few gathers, where hashing every byte cost a second here. Keys that
    differ only in their middle share a bucket, which makes their lookups slower, never wrong.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = ends.astype(np.int64)
    starts = np.concatenate(([0], ends[:-1] + 1))
    last = np.maximum(ends - 1, starts)
    hashes = (ends - starts).astype(np.uint64)
    with np.errstate(over="ignore"):
        for j in range(_HASHED_BYTES):
            head = raw[np.minimum(starts + j, ends)].astype(np.uint64)
            tail = raw[np.maximum(last - j, starts)].astype(np.uint64)
            hashes = (hashes * _HASH_MULTIPLIER + head) * _HASH_MULTIPLIER + tail
        hashes ^= hashes >> np.uint64(29)
        hashes *= _MIX
        hashes ^= hashes >> np.uint64(32)
    return (hashes & np.uint64(BUCKETS - 1)).astype(np.int64)


def _split_keys(data: bytes) -> list[str]:
    """The keys of a NUL-terminated block."""
    if not data:
        return []
    return bytes(data).decode("utf-8").split("\x00")[:-1]


def _copy_binary(rows: Iterable[tuple]) -> io.BytesIO:
    """COPY binary payload for rows of int and bytes fields."""
    out = io.BytesIO()
    out.write(_COPY_HEADER)
    for row in rows:
        out.write(struct.pack("!h", len(row)))
        for value in row:
            if isinstance(value, int):
                out.write(struct.pack("!ii", 4, value))
            else:
                out.write(struct.pack("!i", len(value)))
                out.write(value)
    out.write(b"\xff\xff")
    out.seek(0)
    return out


class _ProcessCache:
    """All keys of one project known to this process, in id order, with their index."""

    def __init__(self):
        self.lock = threading.Lock()
        self.generation: str | None = None
        self.keys: list[str] = []
        self.index: dict[str, int] = {}

    def refresh(self, cur, project_id: int) -> None:
        """Read the blocks committed since the last refresh (one statement: one snapshot)."""
        loaded = len(self.keys)
        cur.execute(
            "SELECT c.generation, b.block_no, b.keys FROM user_key_counters c"
            " LEFT JOIN user_key_blocks b ON b.project_id = c.project_id AND b.block_no >= %s"
            " WHERE c.project_id = %s ORDER BY b.block_no",
            (loaded // BLOCK_SIZE, project_id),
        )
        rows = cur.fetchall()
        if not rows:
            return
        if rows[0][0] != self.generation:
            # The dictionary was recreated (a dropped and remade database): start over.
            self.generation = rows[0][0]
            self.keys.clear()
            self.index.clear()
            if loaded:
                self.refresh(cur, project_id)
                return
        for _, block_no, data in rows:
            if block_no is None:
                continue
            keys = _split_keys(data)
            skip = len(self.keys) - block_no * BLOCK_SIZE
            if skip < 0:
                raise RuntimeError(f"user key block {block_no} of project {project_id} follows a gap")
            fresh = keys[skip:]
            self.index.update(zip(fresh, range(len(self.keys), len(self.keys) + len(fresh)), strict=True))
            self.keys.extend(fresh)

    def add(self, keys: list[str], first_id: int) -> None:
        if first_id != len(self.keys):
            raise RuntimeError("user key cache out of step with the dictionary")
        self.index.update(zip(keys, range(first_id, first_id + len(keys)), strict=True))
        self.keys.extend(keys)


_caches: dict[tuple[str, int], _ProcessCache] = {}
_caches_lock = threading.Lock()


def _process_cache(dsn: str, project_id: int, create: bool) -> _ProcessCache | None:
    with _caches_lock:
        cache = _caches.get((dsn, project_id))
        if cache is None and create:
            cache = _caches[(dsn, project_id)] = _ProcessCache()
        return cache


def clear_process_caches() -> None:
    """Forget every cached dictionary of this process (they reload on the next bulk encode)."""
    with _caches_lock:
        _caches.clear()


class UserKeyDictionary:
    """Bulk encode/decode of one project's user keys over an open psycopg2 connection."""

    def __init__(self, conn, project_id: int):
        self.conn = conn
        self.project_id = project_id
        self._full_blocks: dict[int, list[str]] = {}

    # -- encode -------------------------------------------------------------------------------

    def encode(self, keys: Sequence[str], create: bool = True) -> np.ndarray:
        """uint32 ids aligned with keys; unknown keys get new ids, or MISSING if create is False."""
        if len(keys) == 0:
            return np.empty(0, dtype=np.uint32)
        cache = _process_cache(self.conn.dsn, self.project_id, create=len(keys) >= CACHE_THRESHOLD)
        if cache is None and not self.conn.autocommit and self.conn.get_transaction_status() == _IDLE:
            # A few keys, most often all known: read them as a statement of its own (one round trip,
            # where BEGIN, the read and COMMIT were three); only new keys need the writer's transaction.
            self.conn.autocommit = True
            try:
                with self.conn.cursor() as cur:
                    found = self._read_buckets(cur, keys)
            finally:
                self.conn.autocommit = False
            if not create or all(k in found for k in keys):
                return self._ids(found, keys)
        try:
            with self.conn.cursor() as cur:
                if cache is not None:
                    with cache.lock:
                        ids = self._encode_cached(cur, cache, keys, create)
                else:
                    ids = self._encode_by_buckets(cur, keys, create)
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        return ids

    def _encode_cached(self, cur, cache: _ProcessCache, keys: Sequence[str], create: bool) -> np.ndarray:
        cache.refresh(cur, self.project_id)
        missing_value = int(MISSING)
        ids = np.array(list(map(cache.index.get, keys, repeat(missing_value))), dtype=np.uint32)
        if not create:
            return ids
        missing = np.flatnonzero(ids == MISSING)
        if not len(missing):
            return ids
        next_id = self._lock_counter(cur)
        # Another process may have added keys before the lock was ours.
        cache.refresh(cur, self.project_id)
        if next_id != len(cache.keys):
            raise RuntimeError(f"user key dictionary of project {self.project_id} is inconsistent")
        index = cache.index
        wanted = [keys[i] for i in missing.tolist()]
        fresh = [k for k in dict.fromkeys(wanted) if k not in index]
        if fresh:
            self._append(cur, fresh, next_id)
            self.conn.commit()
            cache.add(fresh, next_id)
        if len(fresh) == len(wanted):
            # Every missing key was distinct and new: their ids are simply the next ones, in order.
            ids[missing] = np.arange(next_id, next_id + len(fresh), dtype=np.uint32)
        else:
            ids[missing] = np.array(list(map(index.get, wanted, repeat(missing_value))), dtype=np.uint32)
        return ids

    def _encode_by_buckets(self, cur, keys: Sequence[str], create: bool) -> np.ndarray:
        found = self._read_buckets(cur, keys)
        if create and any(k not in found for k in keys):
            next_id = self._lock_counter(cur)
            found = self._read_buckets(cur, keys)
            fresh = list(dict.fromkeys(k for k in keys if k not in found))
            if fresh:
                self._append(cur, fresh, next_id)
                found.update(zip(fresh, range(next_id, next_id + len(fresh)), strict=True))
        return self._ids(found, keys)

    @staticmethod
    def _ids(found: dict[str, int], keys: Sequence[str]) -> np.ndarray:
        missing_value = int(MISSING)
        return np.fromiter((found.get(k, missing_value) for k in keys), dtype=np.uint32, count=len(keys))

    def _read_buckets(self, cur, keys: Sequence[str]) -> dict[str, int]:
        """id of each of keys that the dictionary holds (from their hash buckets)."""
        wanted = set(keys)
        data, ends = _terminated(sorted(wanted))
        buckets = sorted(set(_buckets(data, ends).tolist()))
        cur.execute(
            "SELECT keys, ids FROM user_key_buckets WHERE project_id = %s AND bucket = ANY(%s)",
            (self.project_id, buckets),
        )
        found = {}
        for data, ids in cur.fetchall():
            bucket_ids = np.frombuffer(ids, dtype="<u4")
            for key, uid in zip(_split_keys(data), bucket_ids, strict=True):
                if key in wanted:
                    found[key] = int(uid)
        return found

    def _lock_counter(self, cur) -> int:
        """Take the project's writer lock; return the next free id."""
        cur.execute(
            "INSERT INTO user_key_counters (project_id) VALUES (%s) ON CONFLICT DO NOTHING", (self.project_id,)
        )
        cur.execute("SELECT next_id FROM user_key_counters WHERE project_id = %s FOR UPDATE", (self.project_id,))
        return int(cur.fetchone()[0])

    def _append(self, cur, fresh: list[str], first_id: int) -> None:
        """Store fresh keys as ids first_id.. (the caller holds the counter lock)."""
        if first_id + len(fresh) > int(MISSING):
            raise OverflowError(f"project {self.project_id} would exceed {int(MISSING)} user keys")
        data, ends = _terminated(fresh)
        starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
        blocks = []
        position = 0
        while position < len(fresh):
            block_no, offset = divmod(first_id + position, BLOCK_SIZE)
            take = min(BLOCK_SIZE - offset, len(fresh) - position)
            blocks.append((block_no, data[starts[position]:ends[position + take - 1] + 1]))
            position += take
        # Staged uncompressed: compressing here and again in the real tables cost half a second.
        cur.execute("CREATE TEMP TABLE append_blocks (block_no int, keys bytea) ON COMMIT DROP;"
                    " ALTER TABLE append_blocks ALTER keys SET STORAGE EXTERNAL")
        cur.execute("CREATE TEMP TABLE append_buckets (ord int, bucket int, keys bytea, ids bytea) ON COMMIT DROP;"
                    " ALTER TABLE append_buckets ALTER keys SET STORAGE EXTERNAL, ALTER ids SET STORAGE EXTERNAL")
        cur.copy_expert("COPY append_blocks FROM STDIN (FORMAT binary)", _copy_binary(blocks), size=_COPY_CHUNK)
        cur.copy_expert("COPY append_buckets FROM STDIN (FORMAT binary)",
                        _copy_binary(self._bucket_rows(fresh, data, ends, first_id)), size=_COPY_CHUNK)
        cur.execute(
            "INSERT INTO user_key_blocks AS b (project_id, block_no, keys)"
            " SELECT %s, block_no, keys FROM append_blocks"
            " ON CONFLICT (project_id, block_no) DO UPDATE SET keys = b.keys || excluded.keys",
            (self.project_id,),
        )
        cur.execute(
            "INSERT INTO user_key_buckets AS b (project_id, bucket, keys, ids)"
            " SELECT %s, bucket, keys, ids FROM append_buckets"
            " ON CONFLICT (project_id, bucket) DO UPDATE"
            " SET keys = b.keys || excluded.keys, ids = b.ids || excluded.ids",
            (self.project_id,),
        )
        cur.execute("UPDATE user_key_counters SET next_id = %s WHERE project_id = %s",
                    (first_id + len(fresh), self.project_id))

    @staticmethod
    def _bucket_rows(fresh: list[str], data: bytes, ends: np.ndarray, first_id: int):
        """(ord, bucket, keys, ids) rows: the fresh keys regrouped by hash bucket."""
        bucket_of = _buckets(data, ends)
        order = np.argsort(bucket_of, kind="stable")
        regrouped = [fresh[i] for i in order.tolist()]
        ids = (np.arange(len(fresh), dtype=np.int64) + first_id)[order].astype("<u4")
        sorted_buckets = bucket_of[order]
        bounds = np.concatenate(([0], np.flatnonzero(np.diff(sorted_buckets)) + 1, [len(order)])).tolist()
        for ordinal, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            keys = ("\x00".join(regrouped[lo:hi]) + "\x00").encode("utf-8")
            yield (ordinal, int(sorted_buckets[lo]), keys, ids[lo:hi].tobytes())

    # -- lookup and decode --------------------------------------------------------------------

    def lookup(self, key: str) -> int | None:
        """The id of one key, or None if the key was never seen (reads one hash bucket)."""
        uid = self.encode([key], create=False)[0]
        return None if uid == MISSING else int(uid)

    def decode(self, ids: Sequence[int]) -> list[str | None]:
        """Keys aligned with ids (None for an id that was never assigned)."""
        if len(ids) == 0:
            return []
        ids = [int(i) for i in ids]
        if len(ids) >= CACHE_THRESHOLD:
            # Bulk decodes (the embedded broker decodes every user a query reaches) read the
            # process cache that bulk encodes keep, refreshed with the blocks added since.
            cache = _process_cache(self.conn.dsn, self.project_id, create=True)
            with cache.lock:
                try:
                    with self.conn.cursor() as cur:
                        cache.refresh(cur, self.project_id)
                    self.conn.commit()
                except BaseException:
                    self.conn.rollback()
                    raise
                keys = cache.keys
                size = len(keys)
                return [keys[i] if 0 <= i < size else None for i in ids]
        blocks = self._blocks({i // BLOCK_SIZE for i in ids if 0 <= i < int(MISSING)})
        out: list[str | None] = []
        for i in ids:
            block = blocks.get(i // BLOCK_SIZE) if i >= 0 else None
            offset = i % BLOCK_SIZE
            out.append(block[offset] if block is not None and offset < len(block) else None)
        return out

    def _blocks(self, wanted: set[int]) -> dict[int, list[str]]:
        """The keys of blocks by number; full blocks never change, so they are kept."""
        blocks = {b: self._full_blocks[b] for b in wanted if b in self._full_blocks}
        fetch = sorted(wanted - blocks.keys())
        if fetch:
            with self.conn.cursor() as cur:
                cur.execute("SELECT block_no, keys FROM user_key_blocks WHERE project_id = %s AND block_no = ANY(%s)",
                            (self.project_id, fetch))
                rows = cur.fetchall()
            self.conn.commit()
            for block_no, data in rows:
                keys = _split_keys(data)
                blocks[block_no] = keys
                if len(keys) == BLOCK_SIZE:
                    if len(self._full_blocks) >= 32:
                        self._full_blocks.pop(next(iter(self._full_blocks)))
                    self._full_blocks[block_no] = keys
        return blocks

    def iter_decode(self, ids: Iterable[int], batch: int = 20000) -> Iterator[str]:
        """Stream the keys of ids in batches, skipping ids that were never assigned."""
        chunk: list[int] = []
        for i in ids:
            chunk.append(i)
            if len(chunk) == batch:
                yield from (k for k in self.decode(chunk) if k is not None)
                chunk = []
        if chunk:
            yield from (k for k in self.decode(chunk) if k is not None)
