"""The `cohorts` command line, run as a real process against the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest


@pytest.fixture
def cli(database_url, tmp_path):
    env = {**os.environ, "COHORTS_DATABASE_URL": database_url, "COHORTS_STORE_DIR": str(tmp_path / "store")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cohort_engine.cli", *args], env=env, capture_output=True,
                              text=True, timeout=120)
    return run


@pytest.fixture
def project_name(cli):
    name = "cli" + uuid.uuid4().hex[:10]
    done = cli("project", name, "--timezone", "Asia/Shanghai")
    assert done.returncode == 0, done.stderr
    assert f"project {name} id=" in done.stdout and "timezone=Asia/Shanghai" in done.stdout
    return name


def test_ingest_then_compute(cli, project_name, tmp_path):
    (tmp_path / "users.csv").write_text("distinct_id,level\na,1\nb,5\nc,7\n")
    (tmp_path / "events.jsonl").write_text(
        "".join(json.dumps({"distinct_id": k, "event": "pay", "time": t}) + "\n" for k, t in [
            ("a", "2024-03-01 10:00:00"), ("a", "2024-03-01 23:30:00"), ("d", "2024-03-01 12:00:00"),
            ("d", "2024-03-02 00:30:00")]))
    done = cli("--project", project_name, "ingest", "users", str(tmp_path / "users.csv"))
    assert done.returncode == 0, done.stderr
    assert "ingested 3 users rows" in done.stdout
    done = cli("--project", project_name, "ingest", "events", str(tmp_path / "events.jsonl"))
    assert done.returncode == 0, done.stderr
    assert "ingested 4 events rows" in done.stdout
    # Two pays on 2024-03-01 in Shanghai time: a (both), not d (00:30 is the next local day).
    (tmp_path / "paid.json").write_text(json.dumps({"op": "or", "children": [
        {"type": "event", "event": "pay", "window": {"start": "2024-03-01", "end": "2024-03-01"},
         "cmp": "gte", "values": [2]},
        {"type": "profile", "property": "level", "cmp": "gt", "values": [6]}]}))
    done = cli("--project", project_name, "compute", str(tmp_path / "paid.json"), "--base-time", "2024-03-05")
    assert done.returncode == 0, done.stderr
    assert ": 2 users" in done.stdout


def test_a_malformed_file_exits_2_naming_the_line_and_commits_nothing(cli, project_name, tmp_path):
    (tmp_path / "bad.csv").write_text("distinct_id,event,time\nok,pay,2024-03-01 00:00:00\nbad,pay,soon\n")
    done = cli("--project", project_name, "ingest", "events", str(tmp_path / "bad.csv"))
    assert done.returncode == 2
    assert "bad.csv" in done.stderr and "line 3" in done.stderr and "nothing was ingested" in done.stderr
    assert not (tmp_path / "store" / project_name / "manifest.json").exists()


def test_clear_errors_for_bad_arguments(cli, project_name, tmp_path):
    done = cli("project", "x" + uuid.uuid4().hex[:6], "--timezone", "Mars/Olympus")
    assert done.returncode == 2 and "unknown time zone 'Mars/Olympus'" in done.stderr
    done = cli("--project", "no_such_project_" + uuid.uuid4().hex[:6], "ingest", "events", "x.csv")
    assert done.returncode == 2 and "does not exist" in done.stderr
    (tmp_path / "tree.json").write_text(json.dumps({"type": "profile", "property": "p", "cmp": "bogus", "values": []}))
    done = cli("--project", project_name, "compute", str(tmp_path / "tree.json"))
    assert done.returncode == 2 and "invalid definition" in done.stderr
    (tmp_path / "broken.json").write_text("{")
    done = cli("--project", project_name, "compute", str(tmp_path / "broken.json"))
    assert done.returncode == 2 and "not valid JSON" in done.stderr
    done = cli("--project", project_name, "compute", str(tmp_path / "missing.json"))
    assert done.returncode == 2 and "No such file or directory" in done.stderr and "Traceback" not in done.stderr


def test_the_readme_example_definition_computes(cli, project_name, tmp_path):
    loaded = cli("--project", project_name, "sample", "--users", "300", "--events", "4000", "--seed", "3",
                 "--end", "2026-11-21", "--out", str(tmp_path / "sample"), "--ingest")
    assert loaded.returncode == 0, loaded.stderr
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "three-leaf.json"
    done = cli("--project", project_name, "compute", str(example), "--base-time", "2026-11-22T00:00:00")
    assert done.returncode == 0, done.stderr
    assert "users" in done.stdout


def test_sample_loads_once_into_an_empty_store(cli, project_name, tmp_path):
    args = ["--project", project_name, "sample", "--users", "300", "--events", "4000", "--seed", "3",
            "--end", "2024-03-31", "--out", str(tmp_path / "sample"), "--ingest", "--if-store-empty"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert "loaded the sample" in done.stdout
    manifest = json.loads((tmp_path / "store" / project_name / "manifest.json").read_text())
    assert manifest["event_rows"] == 4000 and manifest["user_rows"] == 300
    again = cli(*args)
    assert again.returncode == 0 and "already has data" in again.stdout
    assert json.loads((tmp_path / "store" / project_name / "manifest.json").read_text()) == manifest
