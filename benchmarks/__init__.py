"""`make bench`: a registry of benchmark sections, each measuring rows for the shared table.

A section is a function registered with @section("name"); it gets a BenchContext and returns
Rows. Any module in this package (other than run) is imported by the runner, so a new section
is a new file here. Heavy data is cached under var/bench so reruns are fast.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""
    passed: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline


@dataclass
class BenchContext:
    scale: str
    work_dir: Path
    database_url: str
    notes: list[str] = field(default_factory=list)

    @property
    def small(self) -> bool:
        return self.scale == "small"


Section = Callable[[BenchContext], list[Row]]
SECTIONS: dict[str, Section] = {}


def section(name: str) -> Callable[[Section], Section]:
    """Register a benchmark section under name (its rows are grouped under it)."""
    def register(fn: Section) -> Section:
        SECTIONS[name] = fn
        return fn
    return register


def machine_note() -> str:
    """Cores, memory and CPU model of this machine."""
    memory = ""
    try:
        kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB memory"
    except (OSError, StopIteration, ValueError):
        pass
    model = ""
    try:
        model = next(line for line in open("/proc/cpuinfo") if line.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores{memory}, {model or platform.processor()}, {platform.system()} {platform.release()}"
