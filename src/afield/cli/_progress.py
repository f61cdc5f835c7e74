"""Rich progress displays: compose stages (one line each, with its time) and downloads."""

from __future__ import annotations

from collections import deque
from types import TracebackType

from rich.console import Console
from rich.progress import (
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

__all__ = ["DownloadProgress", "StageProgress"]


class StageProgress:
    """Shows each stage as it starts and ends; keeps the last lines of output for errors.

    Args:
        console: where to draw (stderr, so ``--json`` output on stdout stays clean).
        verbose: also print every line of stage output.
    """

    def __init__(self, console: Console, *, verbose: bool = False) -> None:
        self._console = console
        self._verbose = verbose
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._tasks: dict[int, TaskID] = {}
        self.tail: deque[str] = deque(maxlen=20)

    def __enter__(self) -> StageProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def stage_started(self, index: int, total: int, name: str) -> None:
        """A stage begins."""
        self._tasks[index] = self._progress.add_task(f"[{index + 1}/{total}] {name}", total=1)

    def stage_finished(self, index: int, name: str, seconds: float, cached: bool) -> None:
        """A stage ended (or was taken from the cache)."""
        task = self._tasks[index]
        suffix = " [dim](cached)[/]" if cached else ""
        description = self._progress.tasks[task].description
        self._progress.update(task, completed=1, description=f"{description}{suffix}")
        self._progress.stop_task(task)

    def log(self, line: str) -> None:
        """One line of stage output."""
        self.tail.append(line)
        if self._verbose:
            self._progress.console.print(line, markup=False, highlight=False)


class DownloadProgress:
    """A live line for a download: bytes received and the rate (the total is not known ahead)."""

    def __init__(self, console: Console, description: str) -> None:
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description}"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=None)

    def __enter__(self) -> DownloadProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def received(self, total: int) -> None:
        """``total`` bytes received so far."""
        self._progress.update(self._task, completed=total)

    def note(self, line: str) -> None:
        """A line above the bar (e.g. a retry)."""
        self._progress.console.print(line, markup=False, highlight=False)
