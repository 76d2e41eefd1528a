"""uploads table: the stored content of ID imports (docs/imports.md "Storage")."""

from __future__ import annotations

import zlib

from psycopg2.extras import RealDictCursor

from cohort_engine.imports import Parsed, pack, unpack

COLUMNS = "id, project_id, kind, rows, distinct_ids, duplicates, empty_values, bytes, created_at"
# Level 1: IDs compress ~3x at ~100 MB/s; higher levels cost seconds per million IDs for a few percent.
LEVEL = 1


def insert(conn, project_id: int, parsed: Parsed) -> dict:
    """Store a parsed upload (uncommitted: it commits with the cohort that uses it)."""
    keys = zlib.compress(pack(parsed.keys), LEVEL)
    vals = zlib.compress(pack(parsed.values), LEVEL) if parsed.values is not None else None
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "INSERT INTO uploads (project_id, kind, rows, distinct_ids, duplicates, empty_values, bytes, keys, vals)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING " + COLUMNS,
            (project_id, parsed.kind, parsed.rows, len(parsed.keys), parsed.duplicates, parsed.empty_values,
             parsed.bytes, keys, vals))
        return dict(cur.fetchone())


def get(conn, project_id: int, upload_id: int) -> dict | None:
    """An upload's counts (not its content), if it belongs to the project."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM uploads WHERE id = %s AND project_id = %s", (upload_id, project_id))
        row = cur.fetchone()
        return dict(row) if row else None


def content(conn, project_id: int, upload_id: int) -> tuple[list[str], list[str] | None] | None:
    """The distinct IDs of an upload (and their values, for a tag upload), or None."""
    with conn.cursor() as cur:
        cur.execute("SELECT keys, vals FROM uploads WHERE id = %s AND project_id = %s", (upload_id, project_id))
        row = cur.fetchone()
    if row is None:
        return None
    keys, vals = row
    return unpack(zlib.decompress(keys)), (unpack(zlib.decompress(vals)) if vals is not None else None)


def delete_unreferenced(conn, project_id: int, upload_id: int) -> bool:
    """Delete an upload no cohort definition names any more (a replaced file); False if still used."""
    with conn.cursor() as cur:
        cur.execute(
            "DELETE FROM uploads u WHERE u.id = %s AND u.project_id = %s AND NOT EXISTS (SELECT 1 FROM cohorts c"
            " WHERE c.project_id = u.project_id AND jsonb_path_exists(c.definition,"
            " '$.** ? (@.type == \"import\" && @.upload_id == $id)', jsonb_build_object('id', u.id)))",
            (upload_id, project_id))
        return cur.rowcount == 1
