"""A small store with known rows (events and profiles), shared by the Druid tests of one module."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohort_engine import db
from cohort_engine.broker import DataSources, DataSourceSpec
from cohort_engine.config import EngineConfig
from cohort_engine.project import ProjectEngine

PROVINCES = ["广东省", "北京市", "上海市", "浙江省", None]
ITEMS = ["Sword", "sword", "SHIELD", "potion", "50%_off", None]
START = datetime(2024, 3, 1, tzinfo=timezone.utc)


@dataclass
class DruidStore:
    engine: ProjectEngine
    datasources: DataSources
    events: list[dict]  # rows as Druid sees them: __time (ms), distinct_id, properties
    users: list[dict]


@pytest.fixture(scope="module")
def druid_store(database_url, tmp_path_factory) -> DruidStore:
    rng = random.Random(11)
    root = tmp_path_factory.mktemp("druid")
    name = "d" + uuid.uuid4().hex[:12]
    with db.connection(database_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO projects (name) VALUES (%s)", (name,))
    config = EngineConfig(database_url=database_url, store_dir=str(root / "store"), threads=2)
    engine = ProjectEngine(config, name)

    keys = [f"u{i:02d}" for i in range(40)] + ["用户7", "ユーザー", "x%y"]
    users = []
    for i, key in enumerate(keys[:36]):
        users.append({"distinct_id": key, "ub_risk": rng.choice(["R1", "R2", "R3", "R4", "R5", None]),
                      "level": rng.choice([1, 2, 3, 10, None]), "is_vip": i % 7 == 0})
    events = []
    for _ in range(600):
        day = rng.choice([0, 1, 3, 4, 5])  # no events on 2024-03-03: an empty interior bucket
        moment = START + timedelta(days=day, milliseconds=rng.randrange(86_400_000))
        events.append({
            "distinct_id": rng.choice(keys), "event": rng.choice(["pay", "login", "view"]),
            "time": moment, "sugo_province": rng.choice(PROVINCES),
            "age": rng.choice([18, 25, 30, 30, 41, 60, None]),
            "price": rng.choice([None, 0.5, 9.99, 10.0, 12.5, 49.9, 50.0, 100.25]),
            "item": rng.choice(ITEMS),
        })
    pq.write_table(pa.table({
        "distinct_id": [u["distinct_id"] for u in users], "ub_risk": [u["ub_risk"] for u in users],
        "level": pa.array([u["level"] for u in users], pa.int64()), "is_vip": [u["is_vip"] for u in users],
    }), root / "users.parquet")
    columns = {c: [e[c] for e in events] for c in events[0]}
    columns["time"] = pa.array(columns["time"], pa.timestamp("ms", tz="UTC"))
    columns["age"] = pa.array(columns["age"], pa.int64())
    columns["price"] = pa.array(columns["price"], pa.float64())
    pq.write_table(pa.table(columns), root / "events.parquet")
    engine.ingest_users(root / "users.parquet")
    engine.ingest_events(root / "events.parquet")

    for e in events:
        e["__time"] = int(e.pop("time").timestamp() * 1000)
    for u in users:
        u["__time"] = 0
        u["is_vip"] = "true" if u["is_vip"] else "false"
    datasources = DataSources.for_config(config, {
        "schedule_desc": DataSourceSpec(name, "events"), "tag_bank": DataSourceSpec(name, "users")})
    return DruidStore(engine, datasources, events, users)
