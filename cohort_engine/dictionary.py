"""Per-project user-key dictionary in PostgreSQL: string key <-> dense uint32 id."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

MISSING = np.uint32(0xFFFFFFFF)
_BINARY_HEADER = 19
_ROW = np.dtype([("fields", ">i2"), ("length", ">i4"), ("id", ">i8")])


def _copy_text(keys: Iterable[str]) -> io.BytesIO:
    """(ordinal, key) as COPY text-format rows, escaping the characters COPY treats specially."""
    out = io.StringIO()
    for ordinal, key in enumerate(keys):
        if "\\" in key or "\n" in key or "\r" in key or "\t" in key:
            key = key.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
        out.write(f"{ordinal}\t{key}\n")
    return io.BytesIO(out.getvalue().encode("utf-8"))


class UserKeyDictionary:
    """Bulk encode/decode of one project's user keys over an open psycopg2 connection."""

    def __init__(self, conn, project_id: int):
        self.conn = conn
        self.project_id = project_id

    def _load_keys(self, cur, keys: Sequence[str]) -> None:
        # Bulk joins over a million keys want memory for hashing, and JIT only slows them down.
        cur.execute("SET LOCAL work_mem = '256MB'; SET LOCAL jit = off")
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS encode_keys (ord bigint, key text) ON COMMIT DROP")
        cur.copy_expert("COPY encode_keys (ord, key) FROM STDIN", _copy_text(keys))
        cur.execute("ANALYZE encode_keys")

    def encode(self, keys: Sequence[str], create: bool = True) -> np.ndarray:
        """uint32 ids aligned with keys; unknown keys get new ids, or MISSING if create is False."""
        if len(keys) == 0:
            return np.empty(0, dtype=np.uint32)
        try:
            with self.conn.cursor() as cur:
                self._load_keys(cur, keys)
                if create:
                    self._assign_new_ids(cur)
                buffer = io.BytesIO()
                cur.copy_expert(
                    "COPY (SELECT coalesce(u.id, 4294967295) FROM encode_keys t"
                    " LEFT JOIN user_keys u ON u.project_id = %d AND u.key = t.key ORDER BY t.ord)"
                    " TO STDOUT (FORMAT binary)" % self.project_id,
                    buffer,
                )
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        payload = buffer.getbuffer()[_BINARY_HEADER:-2]
        return np.frombuffer(payload, dtype=_ROW)["id"].astype(np.uint32)

    def _assign_new_ids(self, cur) -> None:
        # The counter row lock serialises writers, and each statement below runs on a fresh
        # snapshot taken after the lock, so a key committed by another writer is seen, not duplicated.
        cur.execute(
            "INSERT INTO user_key_counters (project_id) VALUES (%s) ON CONFLICT DO NOTHING",
            (self.project_id,),
        )
        cur.execute(
            "SELECT next_id FROM user_key_counters WHERE project_id = %s FOR UPDATE", (self.project_id,)
        )
        (next_id,) = cur.fetchone()
        cur.execute(
            "INSERT INTO user_keys (project_id, id, key)"
            " SELECT %s, %s + row_number() OVER (ORDER BY first_ord) - 1, key FROM ("
            "   SELECT t.key, min(t.ord) AS first_ord FROM encode_keys t"
            "   WHERE NOT EXISTS (SELECT 1 FROM user_keys u WHERE u.project_id = %s AND u.key = t.key)"
            "   GROUP BY t.key) fresh",
            (self.project_id, next_id, self.project_id),
        )
        if cur.rowcount:
            cur.execute(
                "UPDATE user_key_counters SET next_id = next_id + %s WHERE project_id = %s",
                (cur.rowcount, self.project_id),
            )

    def lookup(self, key: str) -> int | None:
        """The id of one key, or None if the key was never seen."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT id FROM user_keys WHERE project_id = %s AND key = %s", (self.project_id, key))
            row = cur.fetchone()
        self.conn.commit()
        return None if row is None else int(row[0])

    def decode(self, ids: Sequence[int]) -> list[str | None]:
        """Keys aligned with ids (None for an id that was never assigned)."""
        if len(ids) == 0:
            return []
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT id, key FROM user_keys WHERE project_id = %s AND id = ANY(%s)",
                (self.project_id, [int(i) for i in ids]),
            )
            found = dict(cur.fetchall())
        self.conn.commit()
        return [found.get(int(i)) for i in ids]

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
