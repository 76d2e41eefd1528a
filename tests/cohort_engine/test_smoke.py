from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from cohort_engine.definition import parse_definition
from cohort_engine.project import ProjectEngine


def test_profile_and_event_leaves_over_a_tiny_store(engine_config, project, tmp_path):
    name, _ = project
    engine = ProjectEngine(engine_config, name)
    pq.write_table(pa.table({"distinct_id": ["a", "b", "c"], "level": [1, 3, 5]}), tmp_path / "u.parquet")
    day = datetime(2024, 3, 1, 12, tzinfo=UTC)
    pq.write_table(pa.table({
        "distinct_id": ["a", "a", "b", "d"],
        "event": ["pay", "pay", "pay", "pay"],
        "time": pa.array([day, day, day, day], pa.timestamp("us", tz="UTC")),
    }), tmp_path / "e.parquet")
    engine.ingest_users(tmp_path / "u.parquet")
    engine.ingest_events(tmp_path / "e.parquet")
    tree = parse_definition({"op": "or", "children": [
        {"type": "profile", "property": "level", "cmp": "gte", "values": [5]},
        {"type": "event", "event": "pay", "window": {"start": "2024-03-01", "end": "2024-03-01"},
         "cmp": "gte", "values": [2]},
    ]})
    result = engine.compute(tree, base_time="2024-03-02T00:00:00")
    assert sorted(engine.iter_keys(result.bitmap)) == ["a", "c"]
    never_paid = parse_definition({"type": "event", "event": "pay", "window": {"last": 7}, "cmp": "eq", "values": [0]})
    assert sorted(engine.iter_keys(engine.compute(never_paid, base_time="2024-03-02").bitmap)) == ["c"]
