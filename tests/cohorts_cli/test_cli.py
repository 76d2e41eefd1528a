"""The `cohorts` command against the real service: a live HTTP server over create_app, a real worker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid

import pytest

from cohorts_cli.main import main
from tests.services import ROOT, wait_until
from tests.tasks.conftest import slow_definition


def unique(name: str) -> str:
    """A cohort name not taken in the shared sample project."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


LEAVES = 40


@pytest.fixture(scope="module")
def sample(small_sample):
    """(token, sample files) of the session's small sample project."""
    return small_sample[2], small_sample[3]


@pytest.fixture
def cli(live_server, sample, capsys):
    """Run `cohorts ARGS --url <live server> --token <sample project's>`: (exit status, stdout, stderr)."""
    token, _ = sample

    def run(*args, token=token):
        split = 2 if args[0] == "tags" else 1  # the connection options follow the (sub)command
        status = main(["--progress", "plain", *args[:split], "--url", live_server.url, "--token", token,
                       *args[split:]])
        captured = capsys.readouterr()
        return status, captured.out, captured.err
    return run


def write_json(tmp_path, name, document) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


def job_progress(stderr: str, job_id: int) -> list[tuple[str, int]]:
    return [(m[1], int(m[2])) for m in re.finditer(rf"^job {job_id}: (\w+) (\d+)%", stderr, re.M)]


def test_submit_wait_follows_the_job_and_prints_the_count(cli, sample, worker, tmp_path, live_server):
    status, out, err = cli("submit", write_json(tmp_path, "slow.json", slow_definition(LEAVES)), "--name", unique("slow"),
                           "--wait", "--poll-interval", "0.02")
    assert status == 0, err
    job_id = int(re.search(r"job (\d+) new", out)[1])
    seen = job_progress(err, job_id)
    assert seen[-1] == ("succeed", 100)
    percents = [p for _, p in seen]
    assert percents == sorted(percents), "the bar never goes back"
    assert any(s == "computing" and 0 < p < 100 for s, p in seen), f"no progress between 0 and 100 was shown: {seen}"
    # The count the job computed (its correctness against the reference: tests/tasks, tests/cohort_engine).
    expected = _job(live_server, sample[0], job_id)["result"]["count"]
    assert f"job {job_id} succeed: {expected} users" in out


def _job(live_server, token, job_id):
    import requests

    return requests.get(f"{live_server.url}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"},
                        timeout=10).json()


def test_members_streams_the_keys_to_a_file_with_progress(cli, worker, tmp_path):
    keys = [f"member-{i:05d}" for i in range(2500)]
    status, out, err = cli("submit", write_json(tmp_path, "ids.json", {"type": "ids", "keys": keys}), "--wait",
                           "--poll-interval", "0.02")
    assert status == 0, err
    cohort_id = re.search(r"cohort (\d+) ids", out)[1]
    target = tmp_path / "members.csv"
    status, out, err = cli("members", cohort_id, "-o", str(target))
    assert status == 0, err
    assert sorted(target.read_text().split()) == keys
    assert f"wrote 2500 keys of cohort {cohort_id} to {target}" in out
    percents = [int(p) for p in re.findall(rf"^cohort {cohort_id} members: (\d+)%", err, re.M)]
    assert percents[0] < 100 and percents[-1] == 100, err  # a bar over the stream, from X-Total-Count
    assert "100% (2,500/2,500 keys)" in err
    assert not (tmp_path / "members.csv.part").exists()


def test_cancel_ends_a_computing_job_and_the_list_shows_why(cli, sample, worker, tmp_path, live_server):
    status, out, _ = cli("submit", write_json(tmp_path, "c.json", slow_definition(LEAVES)), "--name", unique("to-cancel"))
    assert status == 0
    job_id = int(re.search(r"job (\d+) new", out)[1])
    wait_until(lambda: _job(live_server, sample[0], job_id)["status"] == "computing", what="the job to start")
    status, out, err = cli("cancel", str(job_id))
    assert status == 0 and f"job {job_id}: cancel requested" in out, (out, err)
    status, out, err = cli("job", str(job_id), "--wait", "--poll-interval", "0.02")
    assert status == 1 and f"job {job_id} failed: cancelled" in err, (status, out, err)
    status, out, _ = cli("jobs", "--status", "failed")
    line = next(line for line in out.splitlines() if line.split()[0] == str(job_id))
    assert "failed" in line and "cancelled" in line


def test_ctrl_c_while_waiting_stops_only_the_waiting(live_server, sample, worker, tmp_path):
    token, _ = sample
    definition = write_json(tmp_path, "i.json", slow_definition(LEAVES))
    process = subprocess.Popen(
        [sys.executable, "-m", "cohorts_cli", "--progress", "plain", "submit", definition, "--name", unique("interrupted"),
         "--wait", "--poll-interval", "0.02", "--url", live_server.url, "--token", token],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    job_id = int(re.search(r"job (\d+) new", process.stdout.readline())[1])
    for line in process.stderr:  # the bar's lines: interrupt once the job is computing
        if f"job {job_id}: computing" in line:
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "keeps running" in err and f"cohorts cancel {job_id}" in err and f"cohorts job {job_id} --wait" in err
    job = wait_until(lambda: (j := _job(live_server, token, job_id))["status"] in ("succeed", "failed") and j,
                     what="the job to end")
    assert job["status"] == "succeed", job


def test_bad_input_and_bad_token_are_explained(cli, tmp_path):
    bad = write_json(tmp_path, "bad.json", {"type": "event", "event": "pay", "window": {"last": 0}, "cmp": "gte",
                                            "values": [1]})
    status, _, err = cli("submit", bad)
    assert status == 2 and "error: 400" in err and "definition.window.last" in err
    status, _, err = cli("jobs", token="not-a-token")
    assert status == 2 and "401 invalid token" in err and "COHORTS_TOKEN" in err


def test_the_bar_is_drawn_by_rich(live_server, sample, worker, tmp_path, capsys):
    token, _ = sample
    path = write_json(tmp_path, "r.json", {"type": "ids", "keys": ["a", "b", "c"]})
    status = main(["--progress", "bar", "submit", path, "--wait", "--url", live_server.url, "--token", token])
    captured = capsys.readouterr()
    assert status == 0 and "succeed: 3 users" in captured.out
    assert "━" in captured.err and "100%" in captured.err


def test_local_sample_command_shows_progress(tmp_path, capsys):
    status = main(["--progress", "plain", "sample", "--users", "50", "--events", "400", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert status == 0
    assert "write sample: 100% (400/400 events)" in captured.err
    assert "wrote 50 users and 400 events" in captured.out


def test_local_ingest_shows_progress_per_file(database_url, tmp_path, monkeypatch, capsys):
    from cohort_engine.sample import write_sample

    written = write_sample(tmp_path / "sample", 30, 200, seed=3)
    monkeypatch.setenv("COHORTS_DATABASE_URL", database_url)
    monkeypatch.setenv("COHORTS_STORE_DIR", str(tmp_path / "store"))
    name = unique("ingest").replace("-", "_")
    assert main(["project", name]) == 0
    status = main(["--progress", "plain", "--project", name, "ingest", "users", str(written["users"]),
                   str(written["users"])])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "ingest users: 50% (1/2 files)" in captured.err and "ingest users: 100% (2/2 files)" in captured.err
    assert captured.out.count("ingested 30 users rows") == 2


def test_tag_commands_submit_list_values_and_distribution(cli, worker, tmp_path):
    gold = [f"gold-{i:04d}" for i in range(1200)]
    silver = [f"silver-{i:04d}" for i in range(300)]
    definition = {"kind": "values", "values": [
        {"value": "gold", "definition": {"type": "ids", "keys": gold}},
        {"value": "silver", "definition": {"type": "ids", "keys": silver + gold[:10]}}]}  # first value wins
    name = unique("tier")
    status, out, err = cli("tags", "submit", write_json(tmp_path, "tier.json", definition), "--name", name, "--wait",
                           "--poll-interval", "0.02")
    assert status == 0, err
    tag_id = re.search(rf"tag (\d+) {name} \(string\)", out)[1]
    assert re.search(r"job \d+ succeed", out)
    status, out, _ = cli("tags", "list")
    assert status == 0 and any(line.split()[0] == tag_id and name in line for line in out.splitlines())
    target = tmp_path / "tier.csv"
    status, out, err = cli("tags", "values", tag_id, "-o", str(target))
    assert status == 0, err
    lines = target.read_text().splitlines()
    assert lines[0] == "key,value"
    assert dict(line.split(",") for line in lines[1:]) == {**{k: "gold" for k in gold}, **{k: "silver" for k in silver}}
    assert "100% (1,500/1,500 rows)" in err and f"wrote 1500 values of tag {tag_id}" in out
    status, out, err = cli("tags", "values", tag_id, "-o", str(target), "--value", "silver")
    assert status == 0 and len(target.read_text().splitlines()) == 1 + len(silver)
    status, out, _ = cli("tags", "distribution", tag_id)
    counts = dict(re.findall(r"^  (\w+)\s+(\d+)$", out, re.M))
    assert counts == {"gold": "1200", "silver": "300"}, out
