"""The Procfile that `make run` starts: what it exposes by default."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"


def expanded_command(process: str, env: dict) -> list[str]:
    """The Procfile line of a process as the shell expands it under env."""
    lines = dict(line.split(":", 1) for line in PROCFILE.read_text().splitlines() if ":" in line)
    script = f"for word in {lines[process].strip()}; do printf '%s\\n' \"$word\"; done"
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def bind_of(words: list[str]) -> str:
    return words[words.index("--bind") + 1]


def test_web_binds_loopback_by_default():
    env = {k: v for k, v in os.environ.items() if k not in ("COHORTS_BIND", "COHORTS_PORT")}
    assert bind_of(expanded_command("web", env)) == "127.0.0.1:6061"


def test_web_bind_opens_only_when_set():
    env = {**os.environ, "COHORTS_BIND": "0.0.0.0", "COHORTS_PORT": "7000"}
    assert bind_of(expanded_command("web", env)) == "0.0.0.0:7000"
