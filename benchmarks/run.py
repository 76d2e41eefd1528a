"""Run the registered benchmark sections, print one table, and update docs/benchmarks.md."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from cohorts_cli.progress import Display

from . import REPO, SECTIONS, BenchContext, Row, machine_note

DOC = REPO / "docs" / "benchmarks.md"
DOC_HEAD = """# Benchmarks

Measured by `make bench` (`python -m benchmarks.run`); each section below is rewritten by the
run that measured it, with its date, command and machine. `BENCH_SCALE=small` runs a quick
version for development and never writes this file. The bench keeps its data under `var/bench`
(generated samples are reused by later runs) and its projects in a database of its own,
`cohorts_bench` (`COHORTS_BENCH_DATABASE_URL`), so it never touches a developer's data.
"""


def load_sections() -> None:
    """Import every section module of the benchmarks package, so its @section functions register."""
    package = Path(__file__).parent
    for module in pkgutil.iter_modules([str(package)]):
        if module.name not in ("run", "__init__") and not module.name.startswith("_"):
            importlib.import_module(f"benchmarks.{module.name}")


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if value == 0 or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(rows: list[Row]) -> list[list[str]]:
    out = [["measurement", "value", "unit", "baseline", "ratio", "target", "result"]]
    for r in rows:
        baseline = f"{_fmt(r.baseline)} ({r.baseline_label})" if r.baseline is not None else ""
        result = {True: "pass", False: "FAIL", None: ""}[r.passed]
        out.append([r.name, _fmt(r.value), r.unit, baseline, _fmt(r.ratio), r.target, result])
    return out


def print_table(title: str, rows: list[Row]) -> None:
    cells = table(rows)
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    print(f"\n== {title}")
    for n, line in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def markdown(name: str, rows: list[Row], ctx: BenchContext, command: str, seconds: float) -> str:
    cells = table(rows)
    lines = [f"<!-- section:{name} -->", f"## {name}", "",
             f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}` in {seconds:.0f} s on: {machine_note()}.", ""]
    lines.append("| " + " | ".join(cells[0]) + " |")
    lines.append("|" + "---|" * len(cells[0]))
    for line in cells[1:]:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |")
    notes = [r for r in rows if r.note]
    if notes or ctx.notes:
        lines.append("")
        lines += [f"- {r.name}: {r.note}" for r in notes]
        lines += [f"- {n}" for n in ctx.notes]
    lines.append(f"<!-- /section:{name} -->")
    return "\n".join(lines) + "\n"


def write_doc(blocks: dict[str, str]) -> None:
    """Replace each measured section's block in docs/benchmarks.md, keeping the others."""
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else DOC_HEAD
    for name, block in blocks.items():
        pattern = re.compile(rf"<!-- section:{re.escape(name)} -->.*?<!-- /section:{re.escape(name)} -->\n?", re.S)
        text = pattern.sub(lambda _m, b=block: b, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("sections", nargs="*", help="sections to run (default: all)")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    load_sections()
    names = args.sections or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    scale = os.environ.get("BENCH_SCALE", "full")
    if scale not in ("full", "small"):
        print("BENCH_SCALE must be full or small", file=sys.stderr)
        return 2
    ctx = BenchContext(
        scale=scale,
        work_dir=Path(os.environ.get("BENCH_DIR", REPO / "var" / "bench")),
        database_url=os.environ.get("COHORTS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/cohorts_bench"),
    )
    command = ("BENCH_SCALE=small " if ctx.small else "") + "make bench" + (f" ({' '.join(args.sections)})" if args.sections else "")
    blocks, failed = {}, False
    # The cohorts command's display (docs/cli.md): a bar over the sections on a terminal, lines otherwise.
    with Display(os.environ.get("COHORTS_PROGRESS", "auto")).task("bench", len(names), "sections") as bar:
        for done, name in enumerate(names):
            bar.update(done, status=name)
            ctx.notes = []
            started = time.perf_counter()
            rows = SECTIONS[name](ctx)
            seconds = time.perf_counter() - started
            print_table(f"{name} (scale {scale}, {seconds:.0f} s)", rows)
            for note in ctx.notes:
                print(f"  note: {note}")
            blocks[name] = markdown(name, rows, ctx, command, seconds)
            failed |= any(r.passed is False for r in rows)
        bar.update(len(names))
    if not ctx.small and not args.no_doc:
        write_doc(blocks)
        print(f"\nwrote {DOC.relative_to(REPO)}")
    if failed:
        print("some targets were missed (FAIL rows above); the figures are recorded all the same")
    return 0


if __name__ == "__main__":
    sys.exit(main())
