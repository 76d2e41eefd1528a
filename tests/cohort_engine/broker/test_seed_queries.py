"""The Sugo seed query bodies (seeds 000 and 001), verbatim, over the sample data set."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import date

import pyarrow.parquet as pq
import pytest

from cohort_engine import db
from cohort_engine.broker import DataSources, DataSourceSpec
from cohort_engine.config import EngineConfig
from cohort_engine.project import ProjectEngine
from cohort_engine.sample import write_sample

from .sugo import execute

CONTEXT = {"timeout": 180000, "useOffheap": True, "groupByStrategy": "v2"}
TAG_QUERY = {  # seed 000, /ant/tag/query/batchUpdate "query"
    "queryType": "lucene_groupBy", "dataSource": "schedule_desc", "intervals": "1000/3000", "granularity": "all",
    "context": CONTEXT,
    "dimensions": [{"type": "default", "dimension": "distinct_id", "outputName": "distinct_id"}],
    "aggregations": [{"name": "sum_age", "type": "lucene_doubleSum", "fieldName": "age"},
                     {"type": "lucene_count", "name": "count"}],
    "limitSpec": {"type": "default", "columns": [{"dimension": "distinct_id"}], "limit": 3},
}
PROVINCE_GROUP = {  # seed 001, /ant/usergroup/single "query"
    "queryType": "user_group", "dataSource": "schedule_desc", "granularity": "all", "intervals": "1000/3000",
    "filter": {"type": "selector", "dimension": "sugo_province", "value": "广东省"}, "dimension": "distinct_id",
    "dataConfig": {"hostAndPorts": "192.168.0.223:6379", "clusterMode": False, "groupId": "schedule_desc_sugo_province"},
    "context": CONTEXT,
}
RISK_GROUP = {  # seed 001, the uindex entry of /ant/usergroup/multi
    "queryType": "user_group", "dataSource": "tag_bank", "granularity": "all", "intervals": "1000/3000",
    "filter": {"type": "selector", "dimension": "ub_risk", "value": "R4"}, "dimension": "distinct_id",
    "dataConfig": {"hostAndPorts": "192.168.0.223:6379", "clusterMode": False, "groupId": "tag_bank_ub_risk"},
    "context": CONTEXT,
}


@pytest.fixture(scope="module")
def sample(database_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    name = "s" + uuid.uuid4().hex[:12]
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO projects (name) VALUES (%s)", (name,))
    config = EngineConfig(database_url=database_url, store_dir=str(root / "store"), threads=2)
    engine = ProjectEngine(config, name)
    written = write_sample(root / "sample", users=400, events=4000, seed=5, end=date(2024, 3, 31))
    engine.ingest_users(written["users"])
    for part in written["events"]:
        engine.ingest_events(part)
    events = pq.read_table(written["events"][0]).to_pylist()
    users = pq.read_table(written["users"]).to_pylist()
    datasources = DataSources.for_config(config, {"schedule_desc": DataSourceSpec(name, "events"),
                                                  "tag_bank": DataSourceSpec(name, "users")})
    return datasources, events, users


def test_tag_query_groups_age_per_user(sample):
    datasources, events, _ = sample
    status, rows = execute(TAG_QUERY, datasources)
    assert status == 200
    per_user = defaultdict(list)
    for e in events:
        per_user[e["distinct_id"]].append(e["age"])
    first = sorted(per_user, key=str.encode)[:3]
    assert rows == [{"v": "v1", "timestamp": rows[0]["timestamp"],
                     "event": {"distinct_id": k, "sum_age": float(sum(per_user[k])), "count": len(per_user[k])}}
                    for k in first]


def test_user_group_seeds_are_non_empty_and_exact(sample):
    datasources, events, users = sample
    status, ids = execute(PROVINCE_GROUP, datasources)
    assert status == 200
    expected = sorted({e["distinct_id"] for e in events if e["sugo_province"] == "广东省"}, key=str.encode)
    assert ids == expected and len(expected) > 10
    status, ids = execute(RISK_GROUP, datasources)
    assert status == 200
    expected = sorted((u["distinct_id"] for u in users if u["ub_risk"] == "R4"), key=str.encode)
    assert ids == expected and len(expected) > 10
