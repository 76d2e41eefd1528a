"""Progress displays of the `cohorts` command: a live bar on a terminal, plain lines otherwise.

Both write to stderr, so stdout holds only the command's results (a count, a table) for scripts.
"""

from __future__ import annotations

import sys

MODES = ("auto", "bar", "plain", "none")


class Display:
    """Makes progress tasks in one mode: bar (rich), plain (a line per whole percent), none."""

    def __init__(self, mode: str = "auto"):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode

    def task(self, description: str, total: float | None, unit: str = ""):
        if self.mode == "bar":
            return BarTask(description, total, unit)
        if self.mode == "plain":
            return PlainTask(description, total, unit)
        return SilentTask()


class SilentTask:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, done: float, total: float | None = None, status: str | None = None) -> None:
        return None


class PlainTask(SilentTask):
    """One stderr line each time the whole percent (or, without a total, the status) changes."""

    def __init__(self, description: str, total: float | None, unit: str):
        self.description, self.total, self.unit = description, total, unit
        self.last = None

    def update(self, done: float, total: float | None = None, status: str | None = None) -> None:
        total = total if total is not None else self.total
        percent = int(100 * done / total) if total else None
        shown = (percent, status) if percent is not None else (done, status)
        if shown == self.last:
            return
        self.last = shown
        if not total:
            text = f"{done:,.0f} {self.unit}".strip()
        elif self.unit == "%":  # the value is a percentage already
            text = f"{percent}%"
        else:
            text = f"{percent}% ({done:,.0f}/{total:,.0f} {self.unit})".replace(" )", ")")
        print(f"{self.description}: {status + ' ' if status else ''}{text}", file=sys.stderr, flush=True)


class BarTask(SilentTask):
    """A rich progress bar on stderr (indeterminate while the total is unknown)."""

    def __init__(self, description: str, total: float | None, unit: str):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                   MofNCompleteColumn() if unit not in ("", "%") else TextColumn(""),
                   TextColumn(unit if unit != "%" else ""), TimeElapsedColumn()]
        # Results printed meanwhile go above the bar when stdout is the same terminal, else straight to stdout.
        self.progress = Progress(*columns, console=Console(stderr=True),
                                 redirect_stdout=sys.stdout.isatty(), redirect_stderr=False)
        self.description = description
        self.task_id = self.progress.add_task(description, total=total)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, done: float, total: float | None = None, status: str | None = None) -> None:
        fields = {"total": total} if total is not None else {}
        description = f"{self.description} {status}" if status else self.description
        self.progress.update(self.task_id, completed=done, description=description, **fields)
