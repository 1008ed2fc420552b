"""Progress bars (rich) that stay quiet when output is not a terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgecnn.core.console import terminal

_quiet = 0


def _console() -> Console:
    """A rich console on the terminal's stderr (edgecnn's own output, see core.console)."""
    return Console(file=terminal(err=True))


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None):
        self._progress, self._task = progress, task

    def advance(self, status: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, status=status)


@contextlib.contextmanager
def progress_bar(label: str, total: int, unit: str = "") -> Iterator[_Bar]:
    """A rich progress bar on stderr (transient; nothing when stderr is not a terminal)."""
    if not terminal(err=True).isatty():
        yield _Bar(None, None)
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=_console(),
        transient=True,
    ) as p:
        yield _Bar(p, p.add_task(label, total=total, status=""))


def log(message: str) -> None:
    """One status line on stderr (none inside `status_lines_off()`)."""
    if not _quiet:
        _console().print(message, highlight=False)


@contextlib.contextmanager
def status_lines_off() -> Iterator[None]:
    """Within, `log` prints nothing: for callers that report the result themselves (single-stage commands)."""
    global _quiet
    _quiet += 1
    try:
        yield
    finally:
        _quiet -= 1
