"""cohorts data access against the real database."""

from __future__ import annotations

import random

from psycopg2.extras import Json

from core.data import cohorts


def test_referencing_matches_whole_cohort_ids_only(pg, project):
    _, project_id = project
    target = random.randint(10_000, 90_000)
    with pg.cursor() as cur:
        cur.execute("INSERT INTO cohorts (id, project_id, name, definition) VALUES (%s, %s, 'target', '{}')",
                    (target, project_id))
        for name, ref in (("refers", target), ("refers-to-longer-id", target * 10)):
            cur.execute("INSERT INTO cohorts (project_id, name, definition) VALUES (%s, %s, %s) RETURNING id",
                        (project_id, name, Json({"op": "and", "children": [
                            {"type": "profile", "property": "x", "cmp": "is_set", "values": []},
                            {"op": "not", "child": {"type": "cohort", "cohort_id": ref}}]})))
            if name == "refers":
                refers = cur.fetchone()[0]
    assert cohorts.referencing(pg, project_id, target) == [refers]
    pg.rollback()
