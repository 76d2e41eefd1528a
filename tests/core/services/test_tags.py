"""A tag version's reads from PostgreSQL: one user's value from a cell (and a label beyond the listed 1000)."""

from __future__ import annotations

import numpy as np
import pytest

from cohort_engine.tag_column import TagColumn, micros_to_datetime
from core.data import cohorts, versions
from core.services.tags import value_at


def stored(conn, project_id: int, column: TagColumn, name: str) -> dict:
    payload, meta = column.serialize()
    tag = cohorts.insert(conn, project_id, name, {"kind": "import", "type": column.value_type},
                         entity="tag", value_type=column.value_type)
    version = versions.insert_succeeded(conn, tag["id"], 1, "2024-06-30T00:00:00Z", meta["count"], "k", meta)
    versions.store_bitmap(conn, version["id"], payload)
    cohorts.set_latest_version(conn, tag["id"], version["id"])
    conn.commit()
    return versions.published_tag(conn, tag["id"])


@pytest.mark.parametrize("value_type", ["string", "number", "time", "boolean"])
def test_value_at_reads_what_the_values_were(pg, project, value_type):
    _, project_id = project
    rng = np.random.default_rng(5)
    uids = np.sort(rng.choice(5000, size=3000, replace=False)).astype(np.uint32)
    raw = {
        # 1500 distinct labels: past the 1000 listed in the meta, so their offsets are read too.
        "string": [f"label-{i % 1500}-é" if i % 7 else "" for i in range(len(uids))],
        "number": rng.normal(size=len(uids)).round(3).tolist(),
        "time": (rng.integers(0, 2**40, size=len(uids))).tolist(),
        "boolean": (rng.random(len(uids)) < 0.5).tolist(),
    }[value_type]
    column = TagColumn.from_values(value_type, uids, np.asarray(raw, dtype=object if value_type == "string" else None))
    version = stored(pg, project_id, column, f"t-{value_type}")
    expected = dict(zip(uids.tolist(), raw, strict=True))
    if value_type == "time":
        expected = {u: micros_to_datetime(v) for u, v in expected.items()}
    for uid in [*rng.integers(0, 5200, size=300).tolist(), 0, 4999, 10**9]:
        assert value_at(pg, version, uid) == expected.get(uid), uid
    assert value_at(pg, version, None) is None
    assert version["count"] == len(uids)
