"""Progress: a rich bar on a terminal; in a log (stderr not a terminal) a plain line at most once a minute."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgecnn.core.console import terminal

_quiet = 0
PLAIN_EVERY_S = 60.0  # a log gets a progress line at most this often: long trainings show they are alive


def _console() -> Console:
    """A rich console on the terminal's stderr (edgecnn's own output, see core.console)."""
    return Console(file=terminal(err=True))


class Advancer(Protocol):
    """What `progress_bar` yields: `advance(status)` once per step."""

    def advance(self, status: str = "") -> None: ...


class _Bar:
    """A rich progress bar's task."""

    def __init__(self, progress: Progress, task: int):
        self._progress, self._task = progress, task

    def advance(self, status: str = "") -> None:
        self._progress.update(self._task, advance=1, status=status)


class _PlainLines:
    """For a log: `label: done/total unit, status, elapsed` lines, at most one per PLAIN_EVERY_S."""

    def __init__(self, label: str, total: int, unit: str):
        self._label, self._total, self._unit = label, total, unit
        self._done = 0
        self._start = self._last = time.monotonic()

    def advance(self, status: str = "") -> None:
        self._done += 1
        now = time.monotonic()
        if now - self._last < PLAIN_EVERY_S or self._done >= self._total:
            return
        self._last = now
        elapsed = int(now - self._start)
        text = f"{self._label}: {self._done}/{self._total} {self._unit}".rstrip()
        _console().print(f"{text}{', ' + status if status else ''}, {elapsed // 60}m{elapsed % 60:02d}s",
                         highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(label: str, total: int, unit: str = "") -> Iterator[Advancer]:
    """A rich progress bar on stderr (transient); when stderr is not a terminal, throttled plain lines."""
    if not terminal(err=True).isatty():
        yield _PlainLines(label, total, unit)
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
