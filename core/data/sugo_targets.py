"""sugo_targets table: each project's outbound allowlist: Sugo's Redis, hproxy and broker targets, the hosts
routine ID imports may fetch from (kind `import`, docs/imports.md), and those its webhooks may call (kind `webhook`,
docs/webhooks.md)."""

from __future__ import annotations

from psycopg2.extras import RealDictCursor

KINDS = ("redis", "hproxy", "broker", "import", "webhook")


def for_project(conn, project_id: int, kind: str | None = None) -> list[dict]:
    """Every target of a project (of one kind, if given) as {kind, host, port, db}, in a stable order."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT kind, host, port, db FROM sugo_targets WHERE project_id = %s AND (%s IS NULL OR kind = %s)"
                    " ORDER BY kind, host, port, db", (project_id, kind, kind))
        return [dict(row) for row in cur.fetchall()]


def add(conn, project_id: int, kind: str, host: str, port: int, db: int = 0) -> bool:
    """Allow one target; False if it was allowed already."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO sugo_targets (project_id, kind, host, port, db) VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING", (project_id, kind, host, port, db))
        return cur.rowcount == 1


def remove(conn, project_id: int, kind: str, host: str, port: int, db: int = 0) -> bool:
    """Disallow one target; False if it was not allowed."""
    with conn.cursor() as cur:
        cur.execute("DELETE FROM sugo_targets WHERE project_id = %s AND kind = %s AND host = %s AND port = %s"
                    " AND db = %s", (project_id, kind, host, port, db))
        return cur.rowcount == 1


def remove_all(conn, project_id: int) -> int:
    with conn.cursor() as cur:
        cur.execute("DELETE FROM sugo_targets WHERE project_id = %s", (project_id,))
        return cur.rowcount
