"""The evaluation's progress bar: rich on a terminal, one line per unit of work in a log."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["Progress"]


class Progress:
    """Progress over units of work: a rich bar on a terminal, one line per unit in a log.

    Writes to stderr; a no-op when disabled.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._console: Any = None
        self._task: Any = None
        self._total = 0
        self._done = 0
        self._description = ""
        self._start = time.perf_counter()

    def __enter__(self) -> Progress:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._console = Console(stderr=True)
        if self._console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]evaluate[/bold] {task.description:<44}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("starting", total=None)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def set_total(self, total: int) -> None:
        self._total = total
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def add_total(self, extra: int) -> None:
        self.set_total(self._total + extra)

    def step(self, description: str) -> None:
        self._description = description
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    def done(self, units: int = 1) -> None:
        self._done += units
        if self._progress is not None:
            self._progress.advance(self._task, units)
        elif self._console is not None:
            elapsed = time.perf_counter() - self._start
            self._console.print(
                f"evaluate [{self._done}/{self._total}] {elapsed:6.0f}s  {self._description}",
                highlight=False, markup=False,
            )

