"""Seed 002's examples and the sample data (cohort_engine.sample) as a reference Dataset."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cohort_engine.sample import write_sample
from tests.cohort_engine.reference import Dataset

SEED = json.loads((Path(__file__).parent / "seed_002.json").read_text(encoding="utf-8"))
USERS, EVENTS, SEED_NUMBER = 400, 8000, 11


def seed_request(name: str, project_id: int | None = None) -> dict:
    """A request body of the seed, as written (projectId replaced by the test project's, when given)."""
    body = copy.deepcopy(SEED["requests"][name])
    if project_id is not None:
        body["projectId"] = project_id
    return body


def _kind(arrow_type) -> str:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_timestamp(arrow_type):
        return "time"
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "number"
    return "string"


def _rows(table: pa.Table, fixed: dict[str, str]) -> tuple[list[dict], dict[str, str]]:
    kinds = {name: _kind(table.schema.field(name).type) for name in table.column_names if name not in fixed}
    rows = []
    for record in table.to_pylist():
        row = {fixed.get(name, name): value for name, value in record.items() if value is not None}
        if "time" in row and row["time"].tzinfo is None:
            row["time"] = row["time"].replace(tzinfo=UTC)
        rows.append(row)
    return rows, kinds


def write_dataset(folder) -> tuple[dict, Dataset]:
    """The sample files (written under folder, ending today) and the same rows as a reference Dataset."""
    written = write_sample(folder, USERS, EVENTS, seed=SEED_NUMBER)
    profiles, user_kinds = _rows(pq.read_table(written["users"]), {"distinct_id": "key"})
    events, event_kinds = [], {}
    for part in written["events"]:
        rows, kinds = _rows(pq.read_table(part), {"distinct_id": "key", "event": "event", "time": "time"})
        events.extend(rows)
        event_kinds.update(kinds)
    return written, Dataset(profiles=profiles, events=events, user_kinds=user_kinds, event_kinds=event_kinds)


def now() -> datetime:
    return datetime.now(UTC)
