"""ID-import section (issue 10): uploading 1M IDs matched on the user key and on a profile property.

The upload row is what a client waits for (parse the streamed file, match the IDs for the counts,
store the upload in PostgreSQL); the compute row is the job's part (read the stored upload, match
again, the bitmap). Baselines in the same run: Python's csv module reading the same file into a set
(key), and one DuckDB statement joining the file to the profiles (property).
"""

from __future__ import annotations

import csv
import random
import shutil
import statistics
import time

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cohort_engine import db, imports
from cohort_engine.config import EngineConfig
from cohort_engine.definition import parse_definition
from cohort_engine.project import ProjectEngine
from cohort_engine.sample import user_keys
from core.data import uploads
from core.services import imports as import_service
from core.settings import Settings

from . import BenchContext, Row, section

PROJECT = "bench_imports"
SCALES = {"full": 1_000_000, "small": 100_000}
MATCHED_SHARE = 0.9  # the rest of the IDs are unknown


def _project(ctx: BenchContext, users: int) -> ProjectEngine:
    """The bench project recreated with `users` profiles (user key and #account_id)."""
    with db.connection(ctx.database_url) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM projects WHERE name = %s", (PROJECT,))
        cur.execute("INSERT INTO projects (name, timezone) VALUES (%s, 'UTC')", (PROJECT,))
    shutil.rmtree(ctx.work_dir / "store" / PROJECT, ignore_errors=True)
    keys = user_keys(users)
    path = ctx.work_dir / f"import-profiles-{users}.parquet"
    pq.write_table(pa.table({"distinct_id": keys, "#account_id": [f"acc{i:07d}" for i in range(users)]}), path)
    engine = ProjectEngine(EngineConfig(database_url=ctx.database_url, store_dir=str(ctx.work_dir / "store")), PROJECT)
    engine.ingest_users(path)
    return engine


def _id_file(ctx: BenchContext, name: str, ids: list[str]) -> str:
    path = ctx.work_dir / f"import-{name}-{len(ids)}.csv"
    with open(path, "w") as f:
        f.write("id\n")
        f.write("\n".join(ids))
        f.write("\n")
    return str(path)


def _upload(engine: ProjectEngine, settings: Settings, path: str, match: str | None) -> tuple[float, dict]:
    """Seconds to parse, match (counts) and store one upload; the upload row."""
    started = time.perf_counter()
    with open(path, "rb") as f:
        parsed = imports.parse(imports.iter_stream(f), match_column=match, limits=import_service.limits(settings))
    session = engine.open_session()
    try:
        imports.match(session, engine.encode, parsed.keys, match)
    finally:
        session.close()
    with db.connection(settings.engine.database_url) as conn:
        row = uploads.insert(conn, engine.project_id, parsed)
    return time.perf_counter() - started, row


def _compute(engine: ProjectEngine, settings: Settings, upload_id: int, match: str | None) -> tuple[float, int]:
    tree = parse_definition({"type": "import", "upload_id": upload_id, "match": match})
    loader = import_service.loader(lambda: db.connection(settings.engine.database_url), engine.project_id, settings)
    started = time.perf_counter()
    result = engine.compute(tree, load_import=loader)
    return time.perf_counter() - started, result.count


def _csv_baseline(path: str) -> float:
    started = time.perf_counter()
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        distinct = {row[0] for row in reader if row}
    assert distinct
    return time.perf_counter() - started


def _duckdb_baseline(path: str, profiles: str) -> float:
    started = time.perf_counter()
    con = duckdb.connect(":memory:")
    con.execute(f"SELECT count(DISTINCT u.distinct_id) FROM read_csv('{path}', header = true) f "
                f"JOIN read_parquet('{profiles}') u ON u.\"#account_id\" = f.id").fetchone()
    con.close()
    return time.perf_counter() - started


@section("imports")
def imports_section(ctx: BenchContext) -> list[Row]:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    db.migrate(ctx.database_url)
    n = SCALES["small" if ctx.small else "full"]
    engine = _project(ctx, n)
    settings = Settings(engine=engine.config)
    rnd = random.Random(10)
    matched = int(n * MATCHED_SHARE)
    keys = user_keys(n)
    by_key = rnd.sample(keys, matched) + [f"unknown{i}" for i in range(n - matched)]
    by_account = [f"acc{i:07d}" for i in rnd.sample(range(n), matched)] + [f"noacc{i}" for i in range(n - matched)]
    rnd.shuffle(by_key)
    rnd.shuffle(by_account)
    key_file, account_file = _id_file(ctx, "keys", by_key), _id_file(ctx, "accounts", by_account)
    profiles = str(ctx.work_dir / f"import-profiles-{n}.parquet")
    rows = []
    for label, path, match, target, baseline, baseline_label in (
            ("user key", key_file, None, 3.0, lambda: _csv_baseline(key_file), "csv module into a set"),
            ("profile property #account_id", account_file, "#account_id", 5.0,
             lambda: _duckdb_baseline(account_file, profiles), "one DuckDB join of file and profiles")):
        rounds = [_upload(engine, settings, path, match) for _ in range(3)]
        upload_seconds = statistics.median(seconds for seconds, _ in rounds)
        compute = [_compute(engine, settings, rounds[-1][1]["id"], match) for _ in range(3)]
        assert all(count == matched for _, count in compute), (compute, matched)
        base = statistics.median(baseline() for _ in range(3))
        rows.append(Row(f"upload {n:,} IDs matched on the {label} (parse, match, store; median of 3)",
                        upload_seconds, "s", baseline=base, baseline_label=baseline_label, target=f"<= {target:g} s",
                        passed=upload_seconds <= target if not ctx.small else None,
                        note=f"rounds {', '.join(f'{s:.2f}' for s, _ in rounds)} s (machine shared with other work)"))
        rows.append(Row(f"compute the import cohort ({label}; the job's part, median of 3)",
                        statistics.median(s for s, _ in compute), "s", baseline=base, baseline_label=baseline_label))
    return rows
